"""Realistic chat-completions request bodies, shared by the wrk script and the Python clients.

A body is `prefix + prompt + suffix`: wrk's Lua script and the asyncio clients splice a prompt
into the same bytes, so a prompt recorded by one is replayed by the other.
"""

from __future__ import annotations

import orjson

PATH = "/v1/chat/completions"
MARK = "@@PROMPT@@"

_SYSTEM = (
    "You are a careful coding assistant working inside a repository. Answer concisely, cite "
    "file paths when you refer to code, prefer small diffs, and never invent APIs. When a "
    "question is ambiguous, state the assumption you make before answering it."
)
_HISTORY = [
    {"role": "user", "content": "What does the recorder addon do when a response is streamed?"},
    {
        "role": "assistant",
        "content": (
            "It installs a tee as flow.response.stream in the responseheaders hook, so chunks "
            "reach the client as they arrive while a copy is kept for the recording."
        ),
    },
    {"role": "user", "content": "And what happens when the client disconnects half way?"},
    {
        "role": "assistant",
        "content": (
            "mitmproxy fires the error hook with 'Client disconnected.', closes the upstream "
            "connection, and the partial stream is logged but never recorded."
        ),
    },
]
_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file of the repository and return its text.",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Path relative to the root."},
                    "start_line": {"type": "integer", "description": "First line, 1-based."},
                    "end_line": {"type": "integer", "description": "Last line, inclusive."},
                },
                "required": ["path"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_code",
            "description": "Search the repository for a regular expression.",
            "parameters": {
                "type": "object",
                "properties": {
                    "pattern": {"type": "string", "description": "A Python regular expression."},
                    "glob": {"type": "string", "description": "Only files matching this glob."},
                },
                "required": ["pattern"],
            },
        },
    },
]


def body_template(*, stream: bool = False, max_tokens: int = 512) -> tuple[bytes, bytes]:
    """(prefix, suffix) of a chat-completions body whose last user message is the prompt."""
    body: dict[str, object] = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": _SYSTEM},
            *_HISTORY,
            {"role": "user", "content": MARK},
        ],
        "tools": _TOOLS,
        "tool_choice": "none",  # the fake upstream then answers in text
        "temperature": 0.2,
        "max_tokens": max_tokens,
        "user": "bench",
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    prefix, _, suffix = orjson.dumps(body).partition(MARK.encode())
    return prefix, suffix


def body(prompt: str, *, stream: bool = False) -> bytes:
    prefix, suffix = body_template(stream=stream)
    return prefix + orjson.dumps(prompt)[1:-1] + suffix


def hit_prompt(i: int) -> str:
    """Prompt number i of the pre-recorded set that the hit path replays (same text as Lua)."""
    return f"Summarise the change set number {i} in two sentences."
