"""RAG debugging: which embedded texts a chat exchange's prompt contains. Pure, no I/O.

An embedded text *matches* when, with runs of whitespace made one space and the ends trimmed, it
occurs as a substring of the prompt (system prompts, every message's text and tool results, all
normalised the same way). Texts shorter than `MIN_MATCH` characters are ignored: "a" or "ok" would
match everything. Among the matches, the *query* is the text of the latest single-input embedding
call made at or before the exchange whose text occurs in the last user message (an application
embeds its question on its own, just before it asks); every other match is a retrieved *chunk*.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from llmreel.providers import Conversation

__all__ = ["MIN_MATCH", "Candidate", "match", "normalise", "prompt_texts"]

MIN_MATCH: Final = 12


def normalise(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class Candidate:
    """An embedded text: its point id, normalised text, when it was embedded and how many inputs
    its call had."""

    point: int
    norm: str
    unix: float
    call_size: int


def prompt_texts(conv: Conversation) -> tuple[str, str]:
    """(the whole prompt, the last user message), normalised."""
    pieces = list(conv.system)
    last_user = ""
    for message in conv.messages:
        texts = [p.text for p in message.parts if p.kind in ("text", "tool_result") and p.text]
        pieces.extend(texts)
        if message.role == "user" and texts:
            last_user = "\n".join(texts)
    return normalise("\n".join(pieces)), normalise(last_user)


def match(
    prompt: str, last_user: str, candidates: Iterable[Candidate], before_unix: float
) -> dict[int, str]:
    """{point: "chunk" | "query"} for the candidates whose text occurs in `prompt`."""
    found: list[Candidate] = [
        c for c in candidates if len(c.norm) >= MIN_MATCH and c.norm in prompt
    ]
    kinds = {c.point: "chunk" for c in found}
    queries: Sequence[Candidate] = [
        c for c in found if c.call_size == 1 and c.unix <= before_unix and c.norm in last_user
    ]
    if queries:
        latest = max(queries, key=lambda c: (c.unix, c.point))
        for c in found:
            if c.norm == latest.norm:
                kinds[c.point] = "query"
    return kinds
