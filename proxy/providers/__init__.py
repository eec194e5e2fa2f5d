"""The wire APIs llmreel understands: which provider and API a request is for (`classify`), what
it asks for (`request_model`, `wants_stream`), what its response says (`summarize`), and the whole
exchange read as a chat (`conversation`).

One module per wire API (`openai_chat`, `openai_completions`, `openai_embeddings`,
`openai_responses`, `anthropic_messages`, `gemini`, `gemini_embed`) holds both its response summary and its
conversation view; `apis` is the table that picks the module, `hosts` the host map and path
shapes, `sse` the event-stream parser, `embeddings` the texts and vectors of embedding calls.
Pure: no I/O.

    >>> from llmreel.providers import classify, summarize
    >>> ep = classify("POST", "api.openai.com", "/v1/chat/completions")
    >>> summarize(ep, b'{"model": "gpt-4o", "usage": {"prompt_tokens": 3}}', "application/json").usage
    Usage(input=3, output=0, cache_read=0, cache_write=0, reasoning=0)
"""

from llmreel.core.calls import Endpoint, ResponseSummary, ToolCall, Usage
from llmreel.providers.apis import Conversation, conversation, summarize
from llmreel.providers.common import Message, Part
from llmreel.providers.hosts import DEFAULT_HOSTS, HostMap, classify, parse_host_mappings
from llmreel.providers.request import request_model, wants_stream

__all__ = [
    "DEFAULT_HOSTS",
    "Conversation",
    "Endpoint",
    "HostMap",
    "Message",
    "Part",
    "ResponseSummary",
    "ToolCall",
    "Usage",
    "classify",
    "conversation",
    "parse_host_mappings",
    "request_model",
    "summarize",
    "wants_stream",
]
