"""Error responses llmreel itself answers with, in each provider's own error shape.

An SDK then raises its usual exception type with our message in it. The status is a 4xx that the
official OpenAI and Anthropic SDKs never retry (they retry 408, 409, 429 and 5xx), and the
response also carries `x-should-retry: false`, so a test sees the error at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

#: Status of an offline miss: 412 Precondition Failed ("a recording exists" did not hold). No SDK
#: retries it, and none gives it a class of its own: the OpenAI and Anthropic SDKs raise their
#: generic APIStatusError. A 404 became NotFoundError, which wrappers such as LangChain's turn
#: into "model not found" and send the user looking at the model name.
MISS_STATUS = 412
BAD_REQUEST_STATUS = 400
#: Status of a call refused because the run's budget is spent: "Payment Required". No SDK retries
#: it, and none maps it to a misleading class (OpenAI and Anthropic raise their generic error).
BUDGET_STATUS = 402


@dataclass(frozen=True, slots=True)
class ErrorReply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]


def error_reply(api: str | None, status: int, message: str, code: str) -> ErrorReply:
    """An error body shaped like the provider of `api` (e.g. "anthropic.messages") would send."""
    family = (api or "").split(".", 1)[0]
    payload: object
    if family == "anthropic":
        payload = {"type": "error", "error": {"type": code, "message": message}}
    elif family == "gemini":
        payload = {"error": {"code": status, "message": message, "status": code.upper()}}
    else:
        payload = {"error": {"message": message, "type": code, "param": None, "code": code}}
    return ErrorReply(
        status=status,
        body=orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n",
        headers=(("content-type", "application/json"), ("x-should-retry", "false")),
    )


def offline_miss(
    api: str | None, method: str, url: str, key: str, namespace: str, detail: str = ""
) -> ErrorReply:
    message = (
        f"llmreel cache miss: no recording of {method} {url} (key {key}, namespace "
        f"{namespace!r}) and llmreel is in offline mode, so the request was not sent."
    )
    if detail:
        message = f"{message} {detail}"
    message += (
        " To record it, run the same command once with --mode auto (LLMREEL_MODE=auto) "
        "and network access."
    )
    return error_reply(api, MISS_STATUS, message, "llmreel_cache_miss")


def budget_spent(api: str | None, spent_usd: float, budget_usd: float) -> ErrorReply:
    message = (
        f"llmreel budget spent: this proxy has spent ${spent_usd:.4f} upstream, past its budget "
        f"of ${budget_usd:.4f} (--budget-usd), so the request was not sent. Recorded calls are "
        "still replayed. Raise --budget-usd, or restart the proxy to start counting again."
    )
    return error_reply(api, BUDGET_STATUS, message, "llmreel_budget_exceeded")
