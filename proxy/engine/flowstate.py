"""One LLM call in progress: what the engine knows about it between the request and its end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmreel.core.modes import Plan
from llmreel.core.singleflight import Lease, RemoteLease
from llmreel.core.wire import StreamTee
from llmreel.providers import Endpoint
from llmreel.storage.records import Recording


@dataclass(slots=True)
class FlowState:
    """Kept by the addon in `flow.metadata["llmreel"]`; created by `Engine.begin`."""

    endpoint: Endpoint
    plan: Plan
    namespace: str
    key: str
    canonical: dict[str, Any]
    model: str | None
    """The model the request asked for, read from the body as sent (not the keyed body)."""
    stream: bool
    """Whether the request asked for a streamed answer, read from the body as sent."""
    started: float
    """Monotonic time the request hook ran."""
    started_unix: float
    """Unix time the request started arriving."""
    method: str
    url: str
    """Upstream URL, credentials in the query masked."""
    client: str = ""
    listener: str = ""
    forwarded_at: float | None = None
    outcome: str = ""
    replay: Recording | None = None
    tee: StreamTee | None = None
    lease: Lease | None = None
    """Set while this request leads the single flight for its key."""
    remote: list[RemoteLease] = field(default_factory=list)
    """Its leases on the same flight beyond this process (other workers, other machines)."""
    shared_missed: bool = False
    """The shared tier counted this request's miss (a follower's polls count once)."""
    request_body: bytes = b""
    """The request body, content-decoded (read once)."""
    seq: int = 0
    """Occurrence of this identical request in the run (sequence mode), else 0."""
    explanation: str = ""
    """For a miss: what differs from the closest recording."""
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    session: str = ""
    """The `llmreel-session` header, when the client sent one."""
    context: str = ""
    """The control API context the request carried."""
    paced: bool = False
    """A hit replayed through the pacer, with its recorded timing."""
    finished: bool = False
    """The exchange was accounted for (its response or error was handled)."""

    @property
    def flight(self) -> tuple[str, str, int]:
        return (self.namespace, self.key, self.seq)

    def release(self, recorded: bool) -> None:
        """End this request's lead of the single flight (no-op when it does not lead)."""
        self.release_remote()
        if self.lease is not None:
            self.lease.release(recorded)
            self.lease = None

    def release_remote(self) -> None:
        """End its leads beyond this process (before the local one: followers there poll)."""
        while self.remote:
            self.remote.pop().release()
