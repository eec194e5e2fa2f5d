"""Reviewed exchanges as eval cases: `llmreel log export --format dataset` writes one JSON object per
exchange, with the input (the request as sent, and the conversation read from it) and the answer as
the expected output, plus the reviewer's label and note. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from llmreel.log.labels import Label
from llmreel.providers import Message, conversation

__all__ = ["DATASET_VERSION", "dataset_case"]

#: Bump when a field changes meaning; adding fields does not need a bump.
DATASET_VERSION: Final = 1


def dataset_case(record: Mapping[str, Any], label: Label | None) -> dict[str, Any]:
    """One eval case from a full log record (bodies included) and its label."""
    conv = conversation(record)
    answer = conv.response.parts if conv.response is not None else ()
    return {
        "v": DATASET_VERSION,
        "id": record.get("id"),
        "time": record.get("time"),
        "provider": record.get("provider"),
        "api": record.get("api"),
        "model": record.get("model"),
        "input": {
            "system": list(conv.system),
            "messages": [_message(m) for m in conv.messages],
            "tools": list(conv.tools),
            "params": conv.params,
            "request": record.get("request_body"),
        },
        "expected": {
            "text": "\n".join(p.text for p in answer if p.kind == "text") or None,
            "tool_calls": [
                {"name": p.name, "arguments": p.text} for p in answer if p.kind == "tool_call"
            ],
            "finish_reason": conv.finish_reason,
        },
        "label": label.label if label else None,
        "note": label.note if label else None,
    }


def _message(message: Message) -> dict[str, Any]:
    return {
        "role": message.role,
        "parts": [
            {
                k: v
                for k, v in (
                    ("kind", p.kind),
                    ("text", p.text),
                    ("name", p.name),
                    ("call_id", p.call_id),
                )
                if v is not None
            }
            for p in message.parts
        ],
    }
