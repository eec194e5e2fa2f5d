"""The agent's eval suite. Run offline on the committed recordings:

    pytest                      # llmreel.toml turns llmreel on, offline
    pytest --llmreel=auto       # record what is new (needs OPENAI_API_KEY and network access)
"""

from __future__ import annotations

import json

import agent
import pytest


@pytest.mark.parametrize("city", ["Paris", "Rome", "Oslo"])
def test_the_agent_looks_the_weather_up_and_answers(city: str, llmreel) -> None:
    agent.run(f"{city} weather right now?")
    ask, answer = llmreel.exchanges
    # The first call offers the tool and the model asks for it with the city.
    assert [t.name for t in ask.tool_calls] == ["get_weather"]
    assert city in ask.tool_calls[0].arguments["city"]
    # The second call sends the tool's result back.
    tool_result = answer.messages[-1]
    assert tool_result.role == "tool"
    assert json.loads(tool_result.parts[0].text)["city"] == city


def test_the_prompt_and_the_cost(llmreel) -> None:
    agent.run("Paris weather right now?")
    first = llmreel.exchanges[0]
    assert first.model == "gpt-4o-mini"
    assert first.system == (agent.SYSTEM,)
    assert "Paris weather right now?" in first.prompt
    # Two calls, and well under a cent: a prompt that grows by accident shows up here.
    assert llmreel.calls == 2
    assert 0 < llmreel.cost_usd < 0.001
    assert llmreel.tokens < 500
