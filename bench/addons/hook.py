"""Bench floor: answer every request from the `request` hook, never touching an upstream."""

from mitmproxy import http

# About the size of a recorded chat completion (the fake upstream padded to ~2 KB of text).
BODY = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","choices":[{"index":0,"message":'
    b'{"role":"assistant","content":"' + b"lorem ipsum " * 255 + b'"}}]}'
)
HEADERS = {
    "content-type": "application/json",
    "openai-version": "2020-10-01",
    "x-request-id": "req_0123456789abcdef",
    "llmreel-cache": "hit",
}


def request(flow: http.HTTPFlow) -> None:
    flow.response = http.Response.make(200, BODY, HEADERS)
