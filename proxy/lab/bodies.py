"""Where things are in a request body of each wire API: the model, the system prompt, the user
turns, the few-shot examples, the tools and the temperature. Pure; bodies are edited in place.

The playground's fields (`apply_edits`) and the probe's perturbations (`llmreel.lab.perturb`)
both go through these accessors, so a wire API is taught once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

from llmreel.providers.hosts import (
    ANTHROPIC_MESSAGES,
    GEMINI_GENERATE,
    OPENAI_COMPLETIONS,
    OPENAI_RESPONSES,
)

__all__ = [
    "EDITABLE",
    "Slot",
    "apply_edits",
    "example_pairs",
    "read_fields",
    "set_temperature",
    "tool_list",
    "user_slots",
]

Json = dict[str, Any]
#: The convenient fields of the playground, applied over the JSON body when sent.
EDITABLE = ("model", "system", "user", "temperature")


@dataclass(frozen=True, slots=True)
class Slot:
    """A string inside a body: `container[key]`."""

    container: Any
    key: Any

    def get(self) -> str:
        return str(self.container[self.key])

    def set(self, value: str) -> None:
        self.container[self.key] = value


def _turns(api: str, body: Json) -> list[Any]:
    field = {ANTHROPIC_MESSAGES: "messages", GEMINI_GENERATE: "contents",
             OPENAI_RESPONSES: "input"}.get(api, "messages")  # fmt: skip
    turns = body.get(field)
    return turns if isinstance(turns, list) else []


def _role(api: str, turn: Any) -> str:
    if not isinstance(turn, dict):
        return ""
    role = str(turn.get("role") or "")
    if api == GEMINI_GENERATE:
        return "assistant" if role == "model" else "user" if role in ("", "user") else role
    return role


def _text_slots(api: str, turn: Json) -> Iterator[Slot]:
    """The text pieces of one turn (not tool results, images or function calls)."""
    if api == GEMINI_GENERATE:
        for part in turn.get("parts") or []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield Slot(part, "text")
        return
    content = turn.get("content")
    if isinstance(content, str):
        yield Slot(turn, "content")
    elif isinstance(content, list):
        for part in content:
            if (isinstance(part, dict) and part.get("type") in ("text", "input_text")
                    and isinstance(part.get("text"), str)):  # fmt: skip
                yield Slot(part, "text")


def user_slots(api: str, body: Json) -> list[Slot]:
    """Every text a user turn holds, in order (the last one is the question asked)."""
    if api == OPENAI_COMPLETIONS:
        return [Slot(body, "prompt")] if isinstance(body.get("prompt"), str) else []
    if api == OPENAI_RESPONSES and isinstance(body.get("input"), str):
        return [Slot(body, "input")]
    return [s for t in _turns(api, body) if _role(api, t) == "user" for s in _text_slots(api, t)]


def example_pairs(api: str, body: Json) -> tuple[list[Any], int, int] | None:
    """The few-shot examples: the turn list, the index of the first example and how many
    (user, plain assistant answer) pairs follow each other there, before the last user turn
    and after any system turns. None when there are fewer than two pairs."""
    turns = _turns(api, body)
    start = 0
    while start < len(turns) and _role(api, turns[start]) in ("system", "developer"):
        start += 1
    count = 0
    while (start + 2 * count + 2 < len(turns)
           and _plain(api, turns[start + 2 * count], "user")
           and _plain(api, turns[start + 2 * count + 1], "assistant")):  # fmt: skip
        count += 1
    return (turns, start, count) if count >= 2 else None


def _plain(api: str, turn: Any, role: str) -> bool:
    return (_role(api, turn) == role and any(True for _ in _text_slots(api, turn))
            and not turn.get("tool_calls"))  # fmt: skip


def tool_list(api: str, body: Json) -> list[Any] | None:
    """The list of tools offered, to reorder (Gemini: the function declarations)."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return None
    if api == GEMINI_GENERATE:
        for entry in tools:
            declarations = entry.get("functionDeclarations") if isinstance(entry, dict) else None
            if isinstance(declarations, list) and len(declarations) > 1:
                return declarations
        return None
    return tools


def set_temperature(api: str, body: Json, value: float) -> None:
    if api == GEMINI_GENERATE:
        config = body.setdefault("generationConfig", {})
        if isinstance(config, dict):
            config["temperature"] = value
        return
    body["temperature"] = value


def _temperature(api: str, body: Json) -> Any:
    if api == GEMINI_GENERATE:
        config = body.get("generationConfig")
        return config.get("temperature") if isinstance(config, dict) else None
    return body.get("temperature")


def _system(api: str, body: Json) -> tuple[str | None, Callable[[str], None]]:
    """The system prompt as text, and a function that sets it (creating it if needed)."""
    if api == ANTHROPIC_MESSAGES:
        value = body.get("system")
        if isinstance(value, list):
            text = "\n".join(b.get("text", "") for b in value if isinstance(b, dict))
            return text, lambda s: body.__setitem__("system", s)
        return (value if isinstance(value, str) else None), lambda s: body.__setitem__("system", s)
    if api == GEMINI_GENERATE:
        name = "system_instruction" if "system_instruction" in body else "systemInstruction"
        value = body.get(name)
        parts = value.get("parts") if isinstance(value, dict) else None
        text = "\n".join(p.get("text", "") for p in parts or [] if isinstance(p, dict))
        return (text if value else None), lambda s: body.__setitem__(name, {"parts": [{"text": s}]})
    if api == OPENAI_RESPONSES:
        value = body.get("instructions")
        return (value if isinstance(value, str) else None), lambda s: body.__setitem__(
            "instructions", s
        )
    turns = _turns(api, body)
    for turn in turns:
        if _role(api, turn) in ("system", "developer"):
            slots = list(_text_slots(api, turn))
            return "\n".join(s.get() for s in slots), lambda s, t=turn: t.__setitem__("content", s)
    return None, lambda s: body.setdefault("messages", []).insert(
        0, {"role": "system", "content": s}
    )


def read_fields(api: str, body: Json) -> dict[str, Any]:
    """The playground's convenient fields, read from a body (None where there is none)."""
    users = user_slots(api, body)
    return {
        "model": body.get("model") if isinstance(body.get("model"), str) else None,
        "system": _system(api, body)[0],
        "user": users[-1].get() if users else None,
        "temperature": _temperature(api, body),
    }


def apply_edits(api: str, body: MutableMapping[str, Any], edits: Json) -> list[str]:
    """Set the given convenient fields on `body`; returns the names it could not place."""
    assert isinstance(body, dict)
    missed = []
    for name, value in edits.items():
        if name == "model" and isinstance(value, str):
            if api == GEMINI_GENERATE and "model" not in body:
                missed.append(name)  # Gemini names its model in the URL
            else:
                body["model"] = value
        elif name == "system" and isinstance(value, str):
            _system(api, body)[1](value)
        elif name == "user" and isinstance(value, str):
            users = user_slots(api, body)
            if users:
                users[-1].set(value)
            else:
                missed.append(name)
        elif (
            name == "temperature" and isinstance(value, int | float) and not isinstance(value, bool)
        ):
            set_temperature(api, body, float(value))
        else:
            missed.append(name)
    return missed
