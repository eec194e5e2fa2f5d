"""Threads from the wire: which earlier call a call continues, and what is new in it.

An agent resends its whole history on every call. Call B continues call A when, in the same
namespace and wire API, B's conversation begins with A's conversation followed by A's answer
(text and tool calls). Each conversation is flattened into turns (one per message part, thinking
left out) and hashed turn by turn, so "does B begin with X" is a set lookup of X's digest among
B's prefix digests. Only what SDKs change between sending and resending is normalised: key order
and whitespace in JSON arguments, surrounding whitespace in texts, `model` for `assistant`.

Pure: no I/O. `proxy.ui.index` keeps the digests in SQLite and does the lookups.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from llmreel.providers import Conversation, Message, Part, conversation

__all__ = ["Fingerprint", "Turn", "fingerprint", "messages_of", "turns_of"]

_DIGEST_SIZE: Final = 16
#: Roles that are the same on the way out and on the way back in.
_ROLE_ALIASES: Final = {"model": "assistant"}
_SKIPPED_KINDS: Final = frozenset({"thinking"})


@dataclass(frozen=True, slots=True)
class Turn:
    """One part of one message, with the role of its message."""

    role: str
    part: Part


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What linking needs from one exchange.

    `prefixes[i]` is the digest of the first i+1 turns of the request (system prompts first);
    `continuation` the digest of all of them followed by the answer, which a later call that
    continues this one begins with (None when there was no answer); `answer` the answer's turns.
    """

    turns: tuple[Turn, ...]
    answer: tuple[Turn, ...]
    prefixes: tuple[bytes, ...]
    continuation: bytes | None

    @property
    def length(self) -> int:
        """Turns in the continuation: where the new turns of a continuing call begin."""
        return len(self.turns) + len(self.answer)


def fingerprint(record: Mapping[str, Any], conv: Conversation | None = None) -> Fingerprint:
    """The fingerprint of a full log record (see `llmreel.log.record`). Never raises."""
    conv = conv if conv is not None else conversation(record)
    scope = f"{record.get('namespace') or ''}\x00{record.get('api') or ''}"
    turns = tuple(turns_of(conv))
    answer = tuple(_turns("assistant", conv.response.parts)) if conv.response else ()
    state = hashlib.blake2b(scope.encode("utf-8", "surrogatepass"), digest_size=_DIGEST_SIZE)
    prefixes: list[bytes] = []
    for turn in turns:
        state.update(_token(turn))
        prefixes.append(state.copy().digest())
    continuation: bytes | None = None
    if answer and not any(t.part.is_error for t in answer):
        for turn in answer:
            state.update(_token(turn))
        continuation = state.digest()
    return Fingerprint(turns, answer, tuple(prefixes), continuation)


def turns_of(conv: Conversation) -> list[Turn]:
    """The request of `conv` as turns: its system prompts, then each message's parts."""
    out = [Turn("system", Part("text", text)) for text in conv.system if text.strip()]
    for message in conv.messages:
        out.extend(_turns(message.role, message.parts))
    return out


def messages_of(turns: Iterable[Turn]) -> list[Message]:
    """Turns regrouped into messages: consecutive turns of one role are one message."""
    grouped: list[Message] = []
    for turn in turns:
        if grouped and grouped[-1].role == turn.role:
            grouped[-1] = Message(turn.role, (*grouped[-1].parts, turn.part))
        else:
            grouped.append(Message(turn.role, (turn.part,)))
    return grouped


def _turns(role: str, parts: Iterable[Part]) -> list[Turn]:
    role = _ROLE_ALIASES.get(role, role)
    return [
        Turn(role, part)
        for part in parts
        if part.kind not in _SKIPPED_KINDS and not (part.kind == "text" and not part.text.strip())
    ]


def _token(turn: Turn) -> bytes:
    part = turn.part
    text = _canonical_json(part.text) if part.kind == "tool_call" else part.text.strip()
    # Call ids are left out: some APIs (Gemini) have none, and the answer's calls are read from a
    # summary while the resent ones come from the request; the name and arguments identify them.
    fields = (turn.role, part.kind, part.name or "", text)
    encoded = "\x1f".join(fields).encode("utf-8", "surrogatepass")
    return len(encoded).to_bytes(8, "big") + encoded


def _canonical_json(text: str) -> str:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text.strip()
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
