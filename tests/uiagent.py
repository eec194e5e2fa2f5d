"""Exchanges of a scripted tool-calling agent, made as the proxy's engine makes them, for the UI's
index and page tests (the end-to-end tests drive real SDKs instead)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson

from llmreel.core.exchange import Exchange
from llmreel.core.ids import new_id
from llmreel.core.redact import mask_headers
from llmreel.providers import Usage, classify, summarize

_clock = itertools.count()


def chat_exchange(
    messages: list[dict[str, Any]],
    *,
    answer: str | None = None,
    tool_calls: list[tuple[str, str, dict[str, Any]]] = (),  # type: ignore[assignment]
    model: str = "gpt-4o-mini",
    cache: str = "miss",
    started: float | None = None,
    status: int = 200,
    **overrides: Any,
) -> tuple[Exchange, dict[str, Any]]:
    """An OpenAI Chat exchange and the assistant message an agent would append next."""
    endpoint = classify("POST", "api.openai.com", "/v1/chat/completions")
    assert endpoint is not None
    message: dict[str, Any] = {"role": "assistant", "content": answer}
    if tool_calls:
        message["tool_calls"] = [
            {
                "id": cid,
                "type": "function",
                "function": {"name": name, "arguments": orjson.dumps(args).decode()},
            }
            for cid, name, args in tool_calls
        ]
    tokens = 20 * len(messages) + 10
    response = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": message,
                     "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": {"prompt_tokens": tokens, "completion_tokens": 7, "total_tokens": tokens + 7},
    }  # fmt: skip
    body = orjson.dumps(response) if status == 200 else b'{"error": {"message": "boom"}}'
    summary = summarize(endpoint, body, "application/json")
    # Strictly increasing start times, so ids sort in the order the agent made the calls.
    start = started if started is not None else time.time() + next(_clock) * 0.001
    fields: dict[str, Any] = {
        "id": new_id(start + 0.5),
        "started": start,
        "method": "POST",
        "url": "https://api.openai.com/v1/chat/completions",
        "endpoint": endpoint,
        "cache": cache,
        "namespace": "default",
        "key": "ab" * 16,
        "model": model,
        "response_model": model,
        "status": status,
        "duration_s": 0.5,
        "upstream_s": 0.49,
        "usage": Usage(input=tokens, output=7) if status == 200 else None,
        "cost_usd": 0.0001 * tokens if status == 200 else None,
        "request_headers": mask_headers(
            [
                ("content-type", "application/json"),
                ("authorization", "Bearer sk-proj-abcdefghijklmnopqrstuvwxyz012345"),
            ]
        ),
        "response_headers": [("content-type", "application/json")],
        "request_body": orjson.dumps({"model": model, "messages": messages}),
        "response_body": body,
        "summary": summary,
    }
    fields.update(overrides)
    return Exchange(**fields), message


def agent_run(steps: int, *, system: str = "You are a careful agent.", task: str = "Find the weather",
              **overrides: Any) -> list[Exchange]:  # fmt: skip
    """`steps` calls of one agent: each answer is a tool call, each tool result goes back."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": task},
    ]
    out = []
    for n in range(steps):
        last = n == steps - 1
        ex, reply = chat_exchange(
            list(messages),
            answer=f"Done after {n} tools." if last else None,
            tool_calls=[] if last else [(f"call_{n}", "lookup", {"query": f"step {n}", "page": n})],
            **overrides,
        )
        out.append(ex)
        messages.append(reply)
        if not last:
            messages.append({"role": "tool", "tool_call_id": f"call_{n}", "content": f"result {n}"})
    return out
