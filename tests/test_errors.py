"""llmreel's own error replies: the offline miss's status, headers, shape and wording."""

from __future__ import annotations

import orjson
import pytest

from llmreel.core.errors import offline_miss

URL = "https://api.openai.com/v1/chat/completions"


def message_of(api: str, body: bytes) -> str:
    doc = orjson.loads(body)
    return str(doc["error"]["message"])


@pytest.mark.parametrize(
    ("api", "shape"),
    [
        ("openai.chat", {"message", "type", "param", "code"}),
        ("anthropic.messages", {"type", "message"}),
        ("gemini.generate", {"code", "message", "status"}),
        (None, {"message", "type", "param", "code"}),
    ],
)
def test_offline_miss_is_a_412_no_sdk_retries_in_the_providers_shape(
    api: str | None, shape: set[str]
) -> None:
    reply = offline_miss(api, "POST", URL, "3f9c", "default")
    # 412: not retried, and not read as "model not found" (404) or a bad key (401/403).
    assert reply.status == 412
    assert ("x-should-retry", "false") in reply.headers
    assert set(orjson.loads(reply.body)["error"]) == shape


@pytest.mark.parametrize("detail", ["", "The closest recording of this endpoint differs in: x."])
def test_offline_miss_message_is_single_spaced_and_says_what_to_do(detail: str) -> None:
    message = message_of("openai", offline_miss("openai.chat", "POST", URL, "3f9c", "ns", detail).body)
    assert "  " not in message
    assert message.startswith("llmreel cache miss: no recording of POST " + URL)
    assert "so the request was not sent. " in message
    assert (detail in message) and message.endswith(
        "run the same command once with --mode auto (LLMREEL_MODE=auto) and network access."
    )
