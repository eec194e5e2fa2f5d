"""One proxied LLM exchange, as every consumer (metrics, the log) sees it once it is over."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmreel.core.calls import Endpoint, ResponseSummary, Usage

#: Cache outcomes, as they appear in the `llmreel-cache` response header, metrics and the log.
CACHE_OUTCOMES = (
    "hit", "miss", "bypass", "refresh", "offline_miss", "passthrough", "budget_refused",
)  # fmt: skip
#: Outcomes llmreel answered itself, without calling (or billing) the upstream.
UNBILLED = frozenset({"hit", "offline_miss", "budget_refused"})


@dataclass(frozen=True, slots=True)
class RecordingRef:
    """The recording a hit replayed: where it is in the store, and which version of it."""

    namespace: str
    key: str
    seq: int
    recorded_at: float


@dataclass(slots=True)
class Exchange:
    """Everything known about one exchange when it ends. Secrets are already masked."""

    id: str
    started: float
    """Unix time the request started arriving."""
    method: str
    url: str
    """Upstream URL, credentials in the query masked."""
    endpoint: Endpoint
    cache: str
    """One of `CACHE_OUTCOMES`."""
    namespace: str
    key: str
    model: str | None = None
    """Model the request asked for (gen_ai.request.model)."""
    response_model: str | None = None
    status: int | None = None
    """HTTP status the client got, or None when no response was completed."""
    error: str | None = None
    error_type: str | None = None
    """Short class of the error: an HTTP status code, `timeout`, `stream_cut`, ..."""
    duration_s: float = 0.0
    upstream_s: float | None = None
    """Time spent waiting on the upstream, None when it was not called."""
    ttfc_s: float | None = None
    stream: bool = False
    usage: Usage | None = None
    cost_usd: float | None = None
    recorded: bool = False
    explanation: str = ""
    """For a miss that was explained: how it differs from the closest recording."""
    client: str = ""
    listener: str = ""
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    request_body: bytes = b""
    response_body: bytes = b""
    summary: ResponseSummary | None = None
    session: str = ""
    """The `llmreel-session` request header: calls a client grouped explicitly."""
    run: str = ""
    """The run id of the `llmreel run` (or `--run-id`) that proxied the call."""
    context: str = ""
    """The control API context token the call carried (not logged: it is a handle, not data)."""
    replayed: RecordingRef | None = None
    """For a hit: the recording whose body `response_body` is (the log refers to it)."""

    @property
    def status_class(self) -> str:
        if self.status is None:
            return "error"
        return f"{self.status // 100}xx"

    @property
    def billed(self) -> bool:
        """Whether the upstream was called (and so billed) for this exchange."""
        return self.cache not in UNBILLED
