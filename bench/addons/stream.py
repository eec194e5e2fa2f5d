"""Bench floor: bare mitmproxy with streaming on (no buffering of response bodies)."""

from mitmproxy import http


def responseheaders(flow: http.HTTPFlow) -> None:
    assert flow.response is not None
    flow.response.stream = True
