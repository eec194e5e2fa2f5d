"""What a test sees of its LLM calls: the `llmreel` fixture's `LLMCall` and `LLMCalls`.

Built from the proxy's `Exchange`s after the fact, in the test's thread: the conversation is
read from the bodies only when a test asks for it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from llmreel.core.exchange import Exchange
from llmreel.log.record import exchange_record
from llmreel.providers import Conversation, Message, Usage, conversation

__all__ = ["LLMCall", "LLMCalls", "ToolCallView"]


@dataclass(frozen=True, slots=True)
class ToolCallView:
    """A function call the model asked for, its arguments parsed (`{}` if they are not JSON)."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None


class LLMCall:
    """One LLM call a test made: what was asked, what came back, and what it cost.

    call.model, call.messages, call.system, call.prompt, call.answer, call.tool_calls
    call.usage, call.tokens, call.cost_usd, call.cache ("hit", "miss", "offline_miss"...)
    """

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange

    @functools.cached_property
    def record(self) -> dict[str, Any]:
        """The exchange as the log stores it (docs/log.md): every field, bodies decoded."""
        return exchange_record(self.exchange)

    @functools.cached_property
    def conversation(self) -> Conversation:
        return conversation(self.record)

    @property
    def model(self) -> str | None:
        """The model the request asked for (the answer's model is `response_model`)."""
        return self.exchange.model

    @property
    def response_model(self) -> str | None:
        return self.exchange.response_model

    @property
    def cache(self) -> str:
        return self.exchange.cache

    @property
    def namespace(self) -> str:
        return self.exchange.namespace

    @property
    def url(self) -> str:
        return self.exchange.url

    @property
    def status(self) -> int | None:
        return self.exchange.status

    @property
    def usage(self) -> Usage | None:
        return self.exchange.usage

    @property
    def tokens(self) -> int:
        """Input plus output tokens (0 when the response reported no usage)."""
        return self.exchange.usage.total if self.exchange.usage is not None else 0

    @property
    def cost_usd(self) -> float:
        """What the call costs (or cost, when it was recorded); 0 when it is not priced."""
        return self.exchange.cost_usd or 0.0

    @property
    def system(self) -> tuple[str, ...]:
        return self.conversation.system

    @property
    def messages(self) -> tuple[Message, ...]:
        """The messages sent, in order (system prompts are in `system`)."""
        return self.conversation.messages

    @property
    def prompt(self) -> str:
        """All text sent: system prompts, then every message's text parts, one per line."""
        texts = [*self.system]
        texts += [
            p.text for m in self.messages for p in m.parts if p.kind in ("text", "tool_result")
        ]
        return "\n".join(texts)

    @property
    def answer(self) -> str:
        """The text of the answer, streamed or not ("" for a tool call or an error)."""
        response = self.conversation.response
        if response is None:
            return ""
        return "".join(p.text for p in response.parts if p.kind == "text")

    @property
    def tool_calls(self) -> list[ToolCallView]:
        response = self.conversation.response
        if response is None:
            return []
        return [
            ToolCallView(p.name or "", _arguments(p.text), p.call_id)
            for p in response.parts
            if p.kind == "tool_call"
        ]

    @property
    def explanation(self) -> str:
        """For an offline miss: how the request differs from the closest recording."""
        return self.exchange.explanation

    def __repr__(self) -> str:
        return f"<LLMCall {self.model} {self.cache} {self.tokens} tokens ${self.cost_usd:.6f}>"


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class LLMCalls(Sequence[LLMCall]):
    """The `llmreel` fixture: the LLM calls the current test made so far, oldest first.

    def test_agent(llmreel):
        run_agent("Weather in Paris?")
        assert llmreel.calls == 2
        assert "Paris" in llmreel.exchanges[0].prompt
        assert llmreel.cost_usd < 0.01
    """

    def __init__(self, exchanges: Callable[[], list[Exchange]], namespace: str) -> None:
        self._exchanges = exchanges
        self.namespace = namespace
        """The namespace the test's calls are recorded in and replayed from."""
        self._views: dict[str, LLMCall] = {}

    @property
    def exchanges(self) -> list[LLMCall]:
        """Every call so far; waits for calls still in flight to finish first."""
        out = []
        for ex in self._exchanges():
            view = self._views.get(ex.id)
            if view is None:
                view = self._views[ex.id] = LLMCall(ex)
            out.append(view)
        return out

    @property
    def calls(self) -> int:
        return len(self.exchanges)

    @property
    def cost_usd(self) -> float:
        return sum(c.cost_usd for c in self.exchanges)

    @property
    def tokens(self) -> int:
        return sum(c.tokens for c in self.exchanges)

    @property
    def hits(self) -> int:
        """Calls answered from a recording."""
        return sum(c.cache == "hit" for c in self.exchanges)

    @property
    def misses(self) -> int:
        """Calls not answered from a recording: sent upstream and recorded (`miss`, and
        `refresh` in record mode), or refused offline (`offline_miss`)."""
        return sum(c.cache in ("miss", "refresh", "offline_miss") for c in self.exchanges)

    def __len__(self) -> int:
        return len(self.exchanges)

    def __iter__(self) -> Iterator[LLMCall]:
        return iter(self.exchanges)

    def __getitem__(self, index: Any) -> Any:
        return self.exchanges[index]

    def __repr__(self) -> str:
        return f"<llmreel {self.namespace!r}: {self.calls} call(s), ${self.cost_usd:.6f}>"
