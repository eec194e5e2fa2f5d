"""The wire APIs llmreel understands: which provider a request is for, and what its response says."""

from llmreel.providers.wire_apis import (
    DEFAULT_HOSTS,
    Endpoint,
    HostMap,
    ResponseSummary,
    Usage,
    classify,
    request_model,
    summarize,
    wants_stream,
)

__all__ = [
    "DEFAULT_HOSTS",
    "Endpoint",
    "HostMap",
    "ResponseSummary",
    "Usage",
    "classify",
    "request_model",
    "summarize",
    "wants_stream",
]
