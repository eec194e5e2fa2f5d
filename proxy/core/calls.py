"""The words for one LLM call that the whole program shares: its endpoint, its usage, and what its
response said. Pure dataclasses; `llmreel.providers` fills them in from the wire.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Endpoint", "ResponseSummary", "ToolCall", "Usage"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Billed tokens, normalised across providers so that totals are comparable.

    `input` counts ALL input tokens, cache reads and cache writes included (Anthropic reports
    uncached input only; we add the cache counts back). `output` counts ALL output tokens,
    reasoning included (Gemini reports thoughts separately; we add them back). `cache_read`,
    `cache_write` and `reasoning` are subsets of those totals, never extra.
    """

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output

    def as_dict(self) -> dict[str, int]:
        return {
            "input": self.input,
            "output": self.output,
            "cache_read": self.cache_read,
            "cache_write": self.cache_write,
            "reasoning": self.reasoning,
        }

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            self.input + other.input,
            self.output + other.output,
            self.cache_read + other.cache_read,
            self.cache_write + other.cache_write,
            self.reasoning + other.reasoning,
        )


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An LLM API endpoint, as far as llmreel cares.

    `provider` is llmreel's id (see `llmreel.providers.DEFAULT_HOSTS`; an unknown host speaking a
    known wire shape is "openai-compatible", "anthropic-compatible" or "gemini-compatible"). `api`
    is the wire flavour ("openai.chat", "anthropic.messages", ...), which decides how bodies are
    read. `operation` and `otel_provider` are the OpenTelemetry GenAI `gen_ai.operation.name` and
    `gen_ai.provider.name` values.
    """

    provider: str
    api: str
    operation: str
    otel_provider: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model asked the client to make. `arguments` is JSON text."""

    id: str | None
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ResponseSummary:
    """What a response body says, stream or not.

    `usage` is None when the body carries none (a chat stream without `include_usage`, an
    error, a stream cut before its usage event). `complete` means a JSON body parsed, or a
    stream reached its terminator (`[DONE]`; `response.completed|incomplete|failed`;
    `message_stop`; a Gemini chunk with `finishReason`). `error` is an error body's or a
    mid-stream error event's "type: message", or "unparseable body" / "empty body".
    With n > 1 choices, only choice 0 is summarised.
    """

    model: str | None
    usage: Usage | None
    text: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str | None
    complete: bool
    error: str | None
