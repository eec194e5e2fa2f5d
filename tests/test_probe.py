"""`llmreel probe`: the figures (pure), the perturbations (pure, seeded), and the command end to end
against the fake upstream, deterministic (stable, exit 0) or not (unstable, exit 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmreel.core.stability import Answer, field_agreement, group, similarity, word_diff
from llmreel.lab.bodies import apply_edits, read_fields, user_slots
from llmreel.lab.perturb import parse_perturbations, perturb
from llmreel.log.exchangelog import ExchangeLog
from llmreel.storage.lmdbstore import LmdbStore
from tests.conftest import ProxyThread
from tests.fakeupstream import FakeUpstream
from tests.test_e2e import openai_client

KEY = "sk-probe-0000000000000000000000"
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]  # fmt: skip
FEW_SHOT = {
    "model": "gpt-4o-mini",
    "tools": WEATHER,
    "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Capital of Spain?"},
        {"role": "assistant", "content": "Madrid."},
        {"role": "user", "content": "Capital of Italy?"},
        {"role": "assistant", "content": "Rome."},
        {"role": "user", "content": "What Is The Capital Of Peru?"},
    ],
}


# --- the figures ---------------------------------------------------------------------------------


def test_identical_answers_score_one_and_form_one_group() -> None:
    answers = [Answer("Paris is the capital.")] * 4
    assert len(group(answers)) == 1
    sim = similarity(answers)
    assert sim.score == 1.0 and sim.jaccard_min == 1.0 and sim.pairs == 6


def test_different_answers_are_grouped_most_common_first_and_score_lower() -> None:
    answers = [Answer("Paris."), Answer("It is Paris, of course."), Answer("Paris.")]
    groups = group(answers)
    assert [(g.answer, g.runs) for g in groups] == [
        ("Paris.", [0, 2]),
        ("It is Paris, of course.", [1]),
    ]
    sim = similarity(answers)
    assert 0 < sim.edit_min < sim.edit_mean < 1
    assert 0 < sim.jaccard_min < 1


def test_tool_calls_agree_field_by_field() -> None:
    answers = [
        Answer("", (("get_weather", '{"city": "Paris", "days": 2}'),)),
        Answer("", (("get_weather", '{"days": 2, "city": "Paris"}'),)),  # same, keys reordered
        Answer("", (("get_weather", '{"city": "paris", "days": "2"}'),)),
    ]
    assert len(group(answers)) == 2
    fields = field_agreement(answers)
    assert fields is not None and fields["kind"] == "tool_calls"
    assert fields["tools"] == 1.0 and fields["keys"] == 1.0
    by_path = {f["path"]: f for f in fields["fields"]}
    assert by_path["[0].arguments.city"]["value"] == pytest.approx(2 / 3, abs=1e-3)
    assert by_path["[0].arguments.city"]["type"] == 1.0
    assert by_path["[0].arguments.days"]["type"] == pytest.approx(2 / 3, abs=1e-3)


def test_json_answers_agree_field_by_field_and_prose_has_no_fields() -> None:
    fields = field_agreement([Answer('{"a": 1, "b": [1]}'), Answer('{"a": 1}')])
    assert fields is not None and fields["kind"] == "json" and fields["keys"] == 0.5
    assert field_agreement([Answer("hello"), Answer("{not json")]) is None


def test_word_diff_marks_what_changed() -> None:
    assert word_diff("the cat sat", "the dog sat") == [
        ("=", "the "),
        ("-", "cat"),
        ("+", "dog"),
        ("=", " sat"),
    ]


# --- the perturbations ---------------------------------------------------------------------------


def test_perturbations_are_seeded_and_leave_run_zero_alone() -> None:
    names = parse_perturbations("whitespace,case,order")
    first, applied0 = perturb("openai.chat", FEW_SHOT, names, seed=7, run=0, n=5)
    assert first == FEW_SHOT and applied0 == []
    one, applied = perturb("openai.chat", FEW_SHOT, names, seed=7, run=3, n=5)
    again, _ = perturb("openai.chat", FEW_SHOT, names, seed=7, run=3, n=5)
    other, _ = perturb("openai.chat", FEW_SHOT, names, seed=8, run=3, n=5)
    assert one == again and one != FEW_SHOT and one != other
    assert applied == ["whitespace", "case", "order"]
    assert FEW_SHOT["messages"][1]["content"] == "Capital of France?"  # the original is untouched
    # The system prompt is not a user turn; the last question stays last; examples stay pairs.
    assert one["messages"][0] == FEW_SHOT["messages"][0]
    assert one["messages"][-1]["content"].lower().split() == "what is the capital of peru?".split()
    roles = [m["role"] for m in one["messages"]]
    assert roles == [m["role"] for m in FEW_SHOT["messages"]]
    assert {m["content"].strip().lower() for m in one["messages"][2::2]} == {
        "paris.",
        "madrid.",
        "rome.",
    }
    assert sorted(t["function"]["name"] for t in one["tools"]) == ["get_time", "get_weather"]


def test_temperature_sweeps_from_zero_to_one() -> None:
    temps = [perturb("gemini.generate", {"contents": []}, ["temperature"], seed=0, run=i, n=5)[0]
             ["generationConfig"]["temperature"] for i in range(5)]  # fmt: skip
    assert temps == [0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="choose from whitespace, case, order, temperature"):
        parse_perturbations("whitespace,shout")


@pytest.mark.parametrize(
    ("api", "body", "user"),
    [
        (
            "anthropic.messages",
            {
                "system": "S",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Hi"},
                            {"type": "tool_result", "content": "x"},
                        ],
                    }
                ],
            },
            "Hi",
        ),
        (
            "gemini.generate",
            {
                "systemInstruction": {"parts": [{"text": "S"}]},
                "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
            },
            "Hi",
        ),
        ("openai.responses", {"instructions": "S", "input": "Hi"}, "Hi"),
        (
            "openai.chat",
            {
                "messages": [
                    {"role": "developer", "content": "S"},
                    {"role": "user", "content": "Hi"},
                ]
            },
            "Hi",
        ),
    ],
)
def test_fields_are_read_and_edited_in_each_wire_api(
    api: str, body: dict[str, Any], user: str
) -> None:
    fields = read_fields(api, body)
    assert fields["system"] == "S" and fields["user"] == user
    missed = apply_edits(
        api, body, {"system": "New system", "user": "New question", "temperature": 0.3}
    )
    assert missed == []
    assert read_fields(api, body) | {"model": None} == {
        "model": None,
        "system": "New system",
        "user": "New question",
        "temperature": 0.3,
    }
    assert [s.get() for s in user_slots(api, body)] == ["New question"]


# --- the command, end to end ---------------------------------------------------------------------


def logged_ids(store: Path) -> list[dict[str, Any]]:
    with LmdbStore(store, create=False) as opened:
        return list(ExchangeLog(opened, retention_s=None).iter(newest_first=False))


@pytest.fixture
def logged(
    make_proxy: Callable[..., ProxyThread], fake: FakeUpstream, bundle: str, tmp_path: Path
) -> dict[str, str]:
    """A chat answer and a tool call, logged; then a proxy left running for the probes."""
    proxy = make_proxy()
    client = openai_client(proxy, fake, bundle)
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Capital of Peru?"}]
    )  # type: ignore[arg-type]
    client.chat.completions.create(model="gpt-4o-mini", tools=WEATHER[:1],  # type: ignore[arg-type]
                                   messages=[{"role": "user", "content": "Weather in Lima?"}])  # fmt: skip
    proxy.stop()
    chat, tool = logged_ids(tmp_path / "store")
    running = make_proxy()
    fake.reset()
    return {
        "chat": chat["id"],
        "tool": tool["id"],
        "proxy": running.url,
        "store": str(tmp_path / "store"),
    }


def llmreel(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own (the proxy of the test holds the store in this one)."""
    full = {**os.environ, "OPENAI_API_KEY": KEY, **(env or {})}
    return subprocess.run([sys.executable, "-c", "from llmreel.cli.main import main; main()", *args],
                          capture_output=True, text=True, env=full, timeout=timeout)  # fmt: skip


def test_a_deterministic_upstream_is_stable(
    logged: dict[str, str], fake: FakeUpstream, confdir: Path
) -> None:
    done = llmreel("probe", logged["chat"], "--n", "4", "--store", logged["store"], "--proxy",
                   logged["proxy"], "--confdir", str(confdir))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        done.stdout.startswith("STABLE score 1.000") and "1 distinct answer(s) in 4" in done.stdout
    )
    assert "4/4 answers" in done.stderr  # progress
    assert len(fake.requests) == 4  # the cache was bypassed: every run reached the upstream
    assert all(r.header("authorization") == f"Bearer {KEY}" for r in fake.requests)


def test_a_varying_upstream_is_unstable_and_the_json_says_why(
    logged: dict[str, str], fake: FakeUpstream, confdir: Path
) -> None:
    fake.vary = 5
    done = llmreel("probe", logged["chat"], "--n", "5", "--json", "--perturb", "whitespace,case",
                   "--seed", "3", "--store", logged["store"], "--proxy", logged["proxy"],
                   "--confdir", str(confdir))  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["stable"] is False and report["score"] < 0.9
    assert report["distinct"] == 5 and report["answered"] == 5 and report["errors"] == 0
    assert set(report) >= {"version", "exchange", "n", "perturb", "seed", "threshold", "score",
                           "similarity", "fields", "cost", "groups", "runs"}  # fmt: skip
    assert report["perturb"] == ["whitespace", "case"] and report["seed"] == 3
    assert (
        set(report["similarity"]) == {"edit", "jaccard", "pairs"}
        and report["similarity"]["pairs"] == 10
    )
    assert report["cost"]["usd"] > 0 and report["cost"]["input_tokens"] > 0
    runs = report["runs"]
    assert [r["index"] for r in runs] == [0, 1, 2, 3, 4]
    assert runs[0]["perturbations"] == [] and runs[1]["perturbations"] == ["whitespace", "case"]
    assert all(r["id"] and r["status"] == 200 and r["cache"] == "bypass" for r in runs)
    sent = sorted(json.loads(r.body)["messages"][0]["content"] for r in fake.requests)
    assert "Capital of Peru?" in sent and len(set(sent)) > 1  # run 0 as recorded, others perturbed
    # With a lower bar, the same answers pass.
    lenient = llmreel("probe", logged["chat"], "--n", "2", "--threshold", "0.1", "--store",
                      logged["store"], "--proxy", logged["proxy"], "--confdir", str(confdir))  # fmt: skip
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr


def test_tool_calls_are_compared_field_by_field(logged: dict[str, str], confdir: Path) -> None:
    done = llmreel("probe", logged["tool"], "--n", "3", "--json", "--store", logged["store"],
                   "--proxy", logged["proxy"], "--confdir", str(confdir))  # fmt: skip
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["fields"]["kind"] == "tool_calls"
    assert report["fields"]["tools"] == 1.0 and report["groups"][0]["answer"].startswith(
        "→ get_weather("
    )


def test_it_cannot_ask_without_a_key_or_offline(
    logged: dict[str, str], fake: FakeUpstream, confdir: Path
) -> None:
    args = ("probe", logged["chat"], "--n", "2", "--store", logged["store"], "--proxy",
            logged["proxy"], "--confdir", str(confdir))  # fmt: skip
    done = llmreel(*args, env={"OPENAI_API_KEY": ""})
    assert done.returncode == 2 and "no OPENAI_API_KEY in the environment" in done.stderr
    done = llmreel(*args, env={"LLMREEL_MODE": "offline"})
    assert done.returncode == 2 and "offline" in done.stderr
    assert fake.requests == []


def test_it_starts_its_own_proxy_when_none_is_given(tmp_path: Path, confdir: Path) -> None:
    """Without --proxy, `llmreel serve` runs in a child process on the same store for the probe."""
    with FakeUpstream(tls=False) as plain:
        store = tmp_path / "store"
        first = llmreel("probe", "0", "--store", str(store))
        assert first.returncode == 1 and "no llmreel store" in first.stderr
        # Log one exchange through a proxy of our own, then probe it with none running.
        import httpx

        from llmreel.cli.server import ProxySettings
        from tests.conftest import ProxyThread as Thread

        proxy = Thread(
            ProxySettings(port=0, metrics_port=0, store=str(store), confdir=str(confdir))
        ).start()
        try:
            with httpx.Client(proxy=proxy.url, trust_env=False) as client:
                client.post(f"{plain.url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]})  # fmt: skip
        finally:
            proxy.stop()
        (ex,) = logged_ids(store)
        done = llmreel(
            "probe",
            ex["id"],
            "--n",
            "2",
            "--json",
            "--store",
            str(store),
            "--confdir",
            str(confdir),
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["distinct"] == 1 and len(plain.requests) == 3
        namespaces = {e["namespace"] for e in logged_ids(store)}
        assert namespaces == {"default", "probe"}


def test_an_environment_key_goes_only_to_the_provider_or_the_original_host() -> None:
    from llmreel.lab.draft import CannotAsk, Draft, credential

    env = {"OPENAI_API_KEY": "sk-env", "ANTHROPIC_API_KEY": "sk-ant-env"}
    openai_draft = Draft("https://api.openai.com/v1/chat/completions", {"model": "m"})
    assert credential(openai_draft, original_host="x", typed_key="", environ=env) == (
        "authorization",
        "Bearer sk-env",
    )
    anthropic_draft = Draft("https://api.anthropic.com/v1/messages", {"model": "m"})
    assert credential(anthropic_draft, original_host="x", typed_key="", environ=env) == (
        "x-api-key",
        "sk-ant-env",
    )
    elsewhere = Draft("https://llm.example.test/v1/chat/completions", {"model": "m"})
    with pytest.raises(CannotAsk, match="type a key"):
        credential(elsewhere, original_host="api.openai.com", typed_key="", environ=env)
    assert credential(elsewhere, original_host="llm.example.test", typed_key="", environ=env) == (
        "authorization", "Bearer sk-env")  # fmt: skip
    assert credential(elsewhere, original_host="x", typed_key="typed", environ=env) == (
        "authorization",
        "Bearer typed",
    )
    ollama = Draft("http://localhost:11434/api/chat/completions", {"model": "m"})
    assert credential(ollama, original_host="x", typed_key="", environ={}) is None
    # Secrets never come into a draft: masked headers and key query parameters are left out.
    record = {"url": "https://generativelanguage.googleapis.com/v1beta/models/g:generateContent?key=***&alt=sse",
              "request_body": {"contents": []}, "request_headers": [["x-goog-api-key", "***"], ["anthropic-beta", "b"],
              ["content-length", "9"], ["llmreel-namespace", "n"]]}  # fmt: skip
    draft = Draft.from_record(record)
    assert draft.url.endswith(":generateContent?alt=sse") and draft.headers == {
        "anthropic-beta": "b"
    }


def test_a_proxy_password_is_not_shown() -> None:
    from llmreel.lab.runs import Lab

    assert Lab(None, proxy="http://me:pa%40ss@127.0.0.1:8080").proxy_url == "http://127.0.0.1:8080"  # type: ignore[arg-type]
