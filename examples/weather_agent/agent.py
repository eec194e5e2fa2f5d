"""A small tool-calling agent: it answers weather questions with a `get_weather` tool.

It uses the official OpenAI SDK and nothing else. The client reads OPENAI_API_KEY and
OPENAI_BASE_URL as usual, so the same code talks to OpenAI, to any compatible server, or to
recordings: under `pytest --llmreel=offline` every call is answered by llmreel.

    python agent.py "What is the weather in Paris?"
"""

from __future__ import annotations

import json
import sys
from typing import Any

import openai

MODEL = "gpt-4o-mini"
SYSTEM = (
    "You are a weather assistant. Call get_weather for the city the user asks about, then "
    "answer in one short sentence."
)
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city's name"}},
                "required": ["city"],
            },
        },
    }
]
# Stand-in for a weather service, so that the example needs no second API.
WEATHER = {
    "paris": {"temperature_c": 18, "sky": "cloudy"},
    "rome": {"temperature_c": 26, "sky": "sunny"},
    "oslo": {"temperature_c": 4, "sky": "snow"},
}


def get_weather(city: str) -> dict[str, Any]:
    for name, weather in WEATHER.items():
        if name in city.lower():
            return {"city": name.title(), **weather}
    return {"error": f"no weather known for {city!r}"}


def run(question: str, client: openai.OpenAI | None = None, max_turns: int = 4) -> str:
    """Answer `question`, calling tools as the model asks; the final answer's text."""
    client = client or openai.OpenAI()
    messages: list[Any] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": question},
    ]
    for _ in range(max_turns):
        reply = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
        message = reply.choices[0].message
        if not message.tool_calls:
            return message.content or ""
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            arguments = json.loads(call.function.arguments or "{}")
            result = get_weather(**arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    raise RuntimeError(f"no answer after {max_turns} turns")


if __name__ == "__main__":
    print(run(" ".join(sys.argv[1:]) or "What is the weather in Paris?"))
