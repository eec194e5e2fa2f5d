"""What kind of failure ended an exchange, from mitmproxy's error message. Pure.

The class is the `error_type` of the log and the `error.type` label of the metrics, so it must
be short, stable and low-cardinality.
"""

from __future__ import annotations

#: Every value `failure_type` can return, besides an HTTP status code.
FAILURE_TYPES = (
    "client_disconnected",
    "timeout",
    "stream_cut",
    "connection_error",
    "protocol_error",
)


def failure_type(message: str, *, streamed: bool) -> str:
    """Classify an exchange that ended without a complete response.

    `streamed` says whether any of the response had already reached the client: a failure after
    that is a cut stream, whatever the socket said.
    """
    lowered = message.lower()
    if "client disconnected" in lowered:
        return "client_disconnected"
    if "timeout" in lowered or "timed out" in lowered:
        return "timeout"
    if streamed:
        return "stream_cut"
    if "connect" in lowered or "refused" in lowered or "reset" in lowered:
        return "connection_error"
    return "protocol_error"
