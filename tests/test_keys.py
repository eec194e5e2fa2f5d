"""Cache keys: equal across irrelevant changes, different across relevant ones."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmreel.core.keys import DEFAULT_KEY_CONFIG, KeyConfig, canonical_request, request_digest

BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    "temperature": 0.2,
    "metadata": {"session_id": "s-1", "team": "a"},
}


def key(
    body: Any = BODY,
    *,
    method: str = "POST",
    scheme: str = "https",
    host: str = "api.openai.com",
    port: int = 443,
    path: str = "/v1/chat/completions",
    query: list[tuple[str, str]] | None = None,
    headers: list[tuple[str, str]] | None = None,
    raw: bytes | None = None,
    config: KeyConfig = DEFAULT_KEY_CONFIG,
) -> str:
    data = raw if raw is not None else json.dumps(body).encode()
    canonical = canonical_request(
        method, scheme, host, port, path, query or [], headers or [], data, config
    )
    return request_digest(canonical)


def test_digest_is_fixed_length_hex() -> None:
    k = key()
    assert len(k) == 32
    int(k, 16)


def test_json_formatting_and_key_order_do_not_matter() -> None:
    reordered = dict(reversed(list(BODY.items())))
    pretty = json.dumps(BODY, indent=4, sort_keys=True).encode()
    assert key(reordered) == key()
    assert key(raw=pretty) == key()


@pytest.mark.parametrize(
    "headers",
    [
        [("authorization", "Bearer sk-other-key-000000000000000000")],
        [("x-api-key", "sk-ant-xyz"), ("user-agent", "OpenAI/Python 9.9")],
        [("x-stainless-retry-count", "2"), ("x-stainless-package-version", "3.1")],
        [("traceparent", "00-abc-def-01"), ("x-request-id", "r1"), ("content-length", "99")],
        [("cookie", "a=b"), ("api-key", "azure"), ("x-goog-api-key", "AIza...")],
        [("accept-encoding", "gzip, br"), ("idempotency-key", "stainless-retry-1")],
    ],
)
def test_credentials_sdk_and_tracing_headers_are_not_keyed(headers: list[tuple[str, str]]) -> None:
    assert key(headers=headers) == key()


def test_credential_query_parameters_are_not_keyed_but_others_are() -> None:
    base = key(query=[("alt", "sse")])
    assert key(query=[("alt", "sse"), ("key", "AIzaSECRET")]) == base
    assert key(query=[("key", "AIzaOTHER"), ("alt", "sse")]) == base
    assert key(query=[("alt", "json")]) != base


@pytest.mark.parametrize(
    "name", ["api_token", "subscription-key", "client_secret", "access-token", "X-Amz-Signature"]
)
def test_credentials_under_any_name_are_not_keyed(name: str) -> None:
    base = key(query=[("alt", "sse")])
    assert key(query=[("alt", "sse"), (name, "secret-one")]) == base
    assert key(query=[(name, "secret-two"), ("alt", "sse")]) == base


@pytest.mark.parametrize("name", ["max_tokens", "pageToken", "author", "design"])
def test_parameters_that_only_resemble_credentials_are_keyed(name: str) -> None:
    assert key(query=[(name, "1")]) != key(query=[(name, "2")])


def test_query_order_does_not_matter() -> None:
    assert key(query=[("a", "1"), ("b", "2")]) == key(query=[("b", "2"), ("a", "1")])


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o"},
        {"temperature": 0.3},
        {"messages": [{"role": "user", "content": "Hi!"}]},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"stream": True},
    ],
)
def test_any_change_to_model_messages_tools_or_parameters_changes_the_key(change: dict[str, Any]) -> None:
    assert key({**BODY, **change}) != key()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "PUT"},
        {"scheme": "http", "port": 443},
        {"host": "api.groq.com"},
        {"port": 8443},
        {"path": "/v1/responses"},
        {"headers": [("anthropic-version", "2023-06-01")]},
        {"headers": [("anthropic-beta", "prompt-caching-2024-07-31")]},
        {"headers": [("openai-beta", "assistants=v2")]},
    ],
)
def test_endpoint_and_behaviour_headers_are_keyed(kwargs: dict[str, Any]) -> None:
    assert key(**kwargs) != key()


def test_repeated_beta_headers_are_order_independent() -> None:
    a = key(headers=[("anthropic-beta", "a,b")])
    b = key(headers=[("anthropic-beta", "b"), ("anthropic-beta", "a")])
    assert a == b


def test_host_case_and_default_port() -> None:
    assert key(host="API.OpenAI.com") == key()
    assert key(port=0) == key()


def test_ignore_fields_removes_volatile_fields_only() -> None:
    config = KeyConfig(ignore_fields=("metadata.session_id", "user"))
    varied = {**BODY, "metadata": {"session_id": "s-2", "team": "a"}, "user": "u-9"}
    assert key(varied, config=config) == key(BODY, config=config)
    assert key({**varied, "metadata": {"session_id": "s-2", "team": "b"}}, config=config) != key(
        BODY, config=config
    )


def test_ignore_fields_wildcards_over_lists() -> None:
    config = KeyConfig(ignore_fields=("messages.*.id",))
    a = {"messages": [{"role": "user", "content": "x", "id": 1}, {"role": "user", "content": "y", "id": 2}]}
    b = {"messages": [{"role": "user", "content": "x", "id": 7}, {"role": "user", "content": "y"}]}
    assert key(a, config=config) == key(b, config=config)


def test_non_json_bodies_are_keyed_by_bytes() -> None:
    assert key(raw=b"hello") == key(raw=b"hello")
    assert key(raw=b"hello") != key(raw=b"hellO")
    assert key(raw=b"\xff\xfe\x00") != key(raw=b"\xff\xfe\x01")
    assert key(raw=b"") == key(raw=b"")


def test_canonical_request_is_readable_and_secret_free() -> None:
    canonical = canonical_request(
        "post", "https", "generativelanguage.googleapis.com", 443,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        [("key", "AIzaSyA-secret"), ("alt", "sse")],
        [("x-goog-api-key", "AIzaSyA-secret"), ("content-type", "application/json")],
        b'{"contents": []}',
    )  # fmt: skip
    assert canonical["method"] == "POST"
    assert canonical["query"] == [["alt", "sse"]]
    assert canonical["headers"] == {}
    assert canonical["body"] == {"contents": []}
    assert "secret" not in json.dumps(canonical)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_key_is_independent_of_serialisation(value: Any) -> None:
    compact = json.dumps(value, separators=(",", ":")).encode()
    spaced = json.dumps(value, indent=2, sort_keys=True).encode()
    assert key(raw=compact) == key(raw=spaced)


@given(st.binary(max_size=200))
def test_any_bytes_give_a_key(data: bytes) -> None:
    assert len(key(raw=data)) == 32
