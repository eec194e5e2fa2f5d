"""The pytest plugin, driving real pytest sessions in subprocesses against the fake upstream."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from llmreel.storage.lmdbstore import LmdbStore
from llmreel.testing.naming import namespace_for
from tests.fakeupstream import FakeUpstream

pytest_plugins = ["pytester"]

AGENT = """
import openai

# Created at import time: the plugin's proxy must already be in the environment.
client = openai.OpenAI(base_url="{url}/v1", api_key="sk-test-0000000000000000000000",
                       max_retries=0)


def ask(prompt, model="gpt-4o-mini"):
    reply = client.chat.completions.create(
        model=model, messages=[{{"role": "system", "content": "Be brief."}},
                               {{"role": "user", "content": prompt}}])
    return reply.choices[0].message.content
"""

TESTS = """
import pytest
from agent import ask


def test_hello(llmreel):
    assert "hello" in ask("say hello").lower()
    assert llmreel.calls == 1


@pytest.mark.parametrize("city", ["Paris", "Rome"])
def test_city(city):
    assert city in ask(f"weather in {city}")
"""


@pytest.fixture
def project(pytester: pytest.Pytester, fake: FakeUpstream, confdir: Path) -> pytest.Pytester:
    """A project whose agent talks to the fake upstream, with llmreel.toml like a user's."""
    pytester.makefile(
        ".toml",
        llmreel=textwrap.dedent(f"""
        store = "recordings"
        confdir = "{confdir}"
        provider-host = ["127.0.0.1:{fake.port}=openai"]
        set = ["ssl_verify_upstream_trusted_ca={fake.cert_path}"]
    """),
    )
    pytester.makepyfile(agent=AGENT.format(url=fake.url), test_agent=TESTS)
    return pytester


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=300)


def namespaces(store: Path) -> set[str]:
    with LmdbStore(store, create=False) as db:
        return {r.namespace for r in db.iter()}


FIXTURE = """
from agent import ask, client

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def test_calls(llmreel):
    assert llmreel.calls == 0 and llmreel.cost_usd == 0
    answer = ask("say hello to the reel")
    client.chat.completions.create(model="gpt-4o-mini", tools=TOOLS,
        messages=[{"role": "user", "content": "Weather in Paris?"}])
    first, second = llmreel.exchanges
    assert first.model == "gpt-4o-mini"
    assert first.system == ("Be brief.",)
    assert "say hello to the reel" in first.prompt
    assert first.answer == answer
    assert [t.name for t in second.tool_calls] == ["get_weather"]
    assert second.tool_calls[0].arguments.get("city")
    assert llmreel.tokens == sum(c.usage.input + c.usage.output for c in llmreel)
    assert 0 < llmreel.cost_usd < 0.01
    assert llmreel.cost_usd == first.cost_usd + second.cost_usd
    print(f"CACHE {[c.cache for c in llmreel]} HITS {llmreel.hits} MISSES {llmreel.misses}")
"""

CHILD = """
import subprocess, sys

def test_child(llmreel):
    out = subprocess.run([sys.executable, "-c", "from agent import ask; print(ask('from a child'))"],
                         capture_output=True, text=True, check=True)
    assert "from a child" in out.stdout
    assert [c.namespace for c in llmreel] == ["test_child.test_child"]
    import json, os, urllib.request  # the control API, for agents written in other languages
    about = json.loads(urllib.request.urlopen(os.environ["LLMREEL_CONTROL_URL"]).read())
    assert about["service"] == "llmreel control"
"""

SHARED = """
import pytest
from agent import ask

@pytest.mark.llmreel(namespace="shared")
def test_one():
    ask("one")

@pytest.mark.llmreel(namespace="shared")
def test_two():
    ask("two")
"""


def test_records_per_test_then_replays_offline_without_the_upstream(
    project: pytest.Pytester, fake: FakeUpstream
) -> None:
    project.makepyfile(test_fixture=FIXTURE, test_child=CHILD, test_shared=SHARED)
    first = run(project, "--llmreel=auto", "-s")
    first.assert_outcomes(passed=7)
    assert len(fake.requests) == 8
    first.stdout.fnmatch_lines([
        "*llmreel (auto, store *recordings)*",
        "8 LLM call(s): 0 hit(s), 8 new recording(s), 0 offline miss(es); cost $*, spent now $*",
        "  test_agent.py::test_hello: 1 new recording(s)",
    ])  # fmt: skip
    first.stdout.fnmatch_lines(["*CACHE ?'miss', 'miss'? HITS 0 MISSES 2*"])
    assert namespaces(project.path / "recordings") == {
        "test_agent.test_hello", "test_agent.test_city.Paris", "test_agent.test_city.Rome",
        "test_fixture.test_calls", "test_child.test_child", "shared",
    }  # fmt: skip

    fake.reset()
    again = run(project, "--llmreel=offline", "-s")
    again.assert_outcomes(passed=7)
    assert fake.requests == []
    again.stdout.fnmatch_lines(["8 LLM call(s): 8 hit(s), 0 new recording(s), 0 offline miss(es)*"])
    again.stdout.fnmatch_lines(["*CACHE ?'hit', 'hit'? HITS 2 MISSES 0*"])


def test_a_changed_prompt_fails_its_own_test_with_the_diff_even_if_the_error_was_swallowed(
    project: pytest.Pytester, fake: FakeUpstream
) -> None:
    run(project, "--llmreel=auto").assert_outcomes(passed=3)
    project.makepyfile(test_agent=TESTS.replace(
        'def test_city(city):\n    assert city in ask(f"weather in {city}")',
        'def test_city(city):\n    try:\n'
        '        ask(f"forecast for {city}" if city == "Paris" else f"weather in {city}")\n'
        '    except Exception:\n        pass  # the application carries on',
    ))  # fmt: skip
    fake.reset()
    result = run(project, "--llmreel=offline")
    result.assert_outcomes(passed=2, failed=1)
    assert fake.requests == []
    result.stdout.fnmatch_lines([
        "*_ test_city?Paris? _*",
        "llmreel: 1 LLM call(s) of this test had no recording, and llmreel is in offline mode.*",
        "POST https://127.0.0.1:*/v1/chat/completions  (namespace 'test_agent.test_city.Paris', key *",
        "*messages?1?.content: 'weather in Paris' -> 'forecast for Paris'*",
        "To record it (with network access and API keys), run:",
        "  pytest --llmreel=auto 'test_agent.py::test_city[Paris]'",
        "*3 LLM call(s): 2 hit(s), 0 new recording(s), 1 offline miss(es)*",
        "  test_agent.py::test_city[Paris]: 1 offline miss(es)",
    ])  # fmt: skip


def test_fail_on_unused_lists_recordings_no_test_replayed(project: pytest.Pytester) -> None:
    two = "from agent import ask\n\ndef test_calls():\n    ask('first')\n    ask('second')\n"
    project.makepyfile(test_two=two)
    run(project, "--llmreel=auto", "test_two.py").assert_outcomes(passed=1)
    project.makepyfile(test_two=two.replace("    ask('second')\n", ""))
    result = run(project, "--llmreel=offline", "--llmreel-fail-on-unused", "test_two.py")
    result.assert_outcomes(passed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "1 recording(s) in the tests' namespaces were not replayed",
        "  unused * namespace=test_two.test_calls",
    ])  # fmt: skip


def test_a_budget_refuses_calls_and_fails_the_test_that_made_them(
    project: pytest.Pytester, fake: FakeUpstream
) -> None:
    loop = (
        "from agent import ask\n\ndef test_loop():\n    for n in range(3):  # a runaway loop\n"
        "        try:\n            ask(f'step {n}')\n        except Exception:\n            pass\n"
    )
    project.makepyfile(test_loop=loop)
    result = run(project, "--llmreel=auto", "--llmreel-budget-usd", "0.0000001", "test_loop.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*2 LLM call(s) of this test were refused: the session's budget ($0.0000001*",
        "budget $0.0000001 (--llmreel-budget-usd)*",
    ])  # fmt: skip
    assert len(fake.requests) == 1  # the first call spent past the budget; the rest never left


def test_xdist_workers_each_run_a_proxy_and_the_summary_adds_them_up(
    project: pytest.Pytester, fake: FakeUpstream
) -> None:
    first = run(project, "--llmreel=auto", "-n", "2")
    first.assert_outcomes(passed=3)
    first.stdout.fnmatch_lines(["3 LLM call(s): 0 hit(s), 3 new recording(s), 0 offline miss(es)*"])
    fake.reset()
    again = run(project, "--llmreel=offline", "-n", "2", "--llmreel-fail-on-unused")
    again.assert_outcomes(passed=3)
    again.stdout.fnmatch_lines(["3 LLM call(s): 3 hit(s), 0 new recording(s), 0 offline miss(es)*"])
    assert fake.requests == [] and again.ret == 0


def test_off_unless_enabled_then_from_the_config_file_or_the_command_line(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_env="import os\n\ndef test_env():\n    print('PROXY', os.environ.get('HTTPS_PROXY'))\n"
    )
    off = run(project, "-s", "test_env.py")
    off.assert_outcomes(passed=1)
    off.stdout.fnmatch_lines(["*PROXY None"])
    assert "llmreel:" not in off.stdout.str()
    config = project.path / "llmreel.toml"
    config.write_text(config.read_text() + '\nllmreel = "offline"\n')
    on = run(project, "-s", "test_env.py")
    on.stdout.fnmatch_lines(
        ["llmreel: mode offline (llmreel in *llmreel.toml)*", "*PROXY http://127.0.0.1:*"]
    )
    # The command line wins over the file; one namespace for the whole session.
    whole = run(project, "--llmreel=auto", "--llmreel-namespace=all", "test_agent.py")
    whole.assert_outcomes(passed=3)
    assert namespaces(project.path / "recordings") == {"all"}
    wrong = run(project, "--llmreel=sometimes")
    assert wrong.ret == 4 and "invalid choice" in wrong.stderr.str()


@pytest.mark.parametrize(
    ("nodeid", "namespace"),
    [
        ("tests/test_agent.py::test_weather", "tests.test_agent.test_weather"),
        ("tests/test_agent.py::TestAgent::test_weather[paris-1]",
         "tests.test_agent.TestAgent.test_weather.paris-1"),
    ],
)  # fmt: skip
def test_namespaces_are_readable_node_ids(nodeid: str, namespace: str) -> None:
    assert namespace_for(nodeid) == namespace


def test_namespaces_of_unusual_node_ids_stay_distinct_and_short() -> None:
    odd = [namespace_for(f"t.py::test[{p}]") for p in ("a b", "a/b", "a:b", "ü", "x" * 300)]
    assert len(set(odd)) == len(odd)
    assert all(len(n) <= 120 and n.replace("_", "a").replace(".", "a").replace("-", "a").isalnum()
               for n in odd)  # fmt: skip
