"""Misses explained: the closest recorded request and a field-level diff."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from typing import Any

from llmreel.core.diff import (
    Change,
    closest,
    describe,
    endpoint,
    explain,
    field_diff,
    resemblance,
    sketch,
)
from llmreel.core.keys import canonical_request


def chat(messages: list[dict[str, Any]] | None = None, **body: Any) -> dict[str, Any]:
    payload = {
        "model": "gpt-4o-mini",
        "temperature": 0.2,
        "messages": messages
        if messages is not None
        else [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        **body,
    }
    import orjson

    return canonical_request(
        "POST", "https", "api.openai.com", 443, "/v1/chat/completions", [], [],
        orjson.dumps(payload),
    )  # fmt: skip


def test_identical_requests_have_no_diff() -> None:
    assert field_diff(chat(), chat()) == []
    assert describe([]) == "no differences"


def test_changed_message_and_temperature() -> None:
    new = chat(temperature=0.3)
    new["body"]["messages"][1]["content"] = "Hello"
    changes = field_diff(chat(), new)
    assert changes == [
        Change("body.messages[1].content", "changed", "'Hi'", "'Hello'"),
        Change("body.temperature", "changed", "0.2", "0.3"),
    ]
    assert describe(changes) == "messages[1].content: 'Hi' -> 'Hello'; temperature: 0.2 -> 0.3"


def test_added_tool() -> None:
    tool = {"type": "function", "function": {"name": "get_weather"}}
    old, new = (
        chat(tools=[tool]),
        chat(tools=[tool, {"type": "function", "function": {"name": "x"}}]),
    )
    assert describe(field_diff(old, new)).startswith("tools[1] added: {")
    assert describe(field_diff(chat(), chat(tools=[tool]))).startswith("tools: absent -> [{")


def test_a_field_on_one_side_only_reads_as_absent_on_the_other() -> None:
    # Recorded with `stream: false`, sent without it (and the reverse): "stream removed: false"
    # read as if the answer to "removed?" were false.
    assert describe(field_diff(chat(stream=False), chat())) == "stream: false -> absent"
    assert describe(field_diff(chat(), chat(stream=False))) == "stream: absent -> false"
    assert str(Change("body.metadata[\"run id\"]", "added", new="'x'")) == (
        'metadata["run id"]: absent -> \'x\''
    )
    # A list item keeps "added"/"removed": it was inserted or dropped at that index.
    assert str(Change("body.messages[3]", "removed", old="{}")) == "messages[3] removed: {}"


def test_inserted_message_is_one_insertion() -> None:
    old = chat()
    new = copy.deepcopy(old)
    new["body"]["messages"].insert(1, {"role": "user", "content": "Context first"})
    changes = field_diff(old, new)
    assert [(c.path, c.kind) for c in changes] == [("body.messages[1]", "added")]
    removed = field_diff(new, old)
    assert [(c.path, c.kind) for c in removed] == [("body.messages[1]", "removed")]


def test_query_header_and_endpoint_changes() -> None:
    old = canonical_request(
        "POST", "https", "generativelanguage.googleapis.com", 443,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        [("alt", "sse"), ("key", "secret")], [("anthropic-beta", "a")], b"{}",
    )  # fmt: skip
    new = canonical_request(
        "POST", "https", "generativelanguage.googleapis.com", 443,
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
        [("alt", "json")], [("anthropic-beta", "b")], b"{}",
    )  # fmt: skip
    text = describe(field_diff(old, new))
    assert "query.alt: 'sse' -> 'json'" in text
    assert "headers.anthropic-beta: 'a' -> 'b'" in text
    assert text.startswith("path: '/v1beta/models/gemini-2.5-flash")
    assert "secret" not in text


def test_int_and_float_differ_as_they_do_in_the_key() -> None:
    assert describe(field_diff(chat(max_tokens=1), chat(max_tokens=1.0))) == "max_tokens: 1 -> 1.0"


def test_long_strings_show_the_part_that_differs() -> None:
    base = "x" * 500
    changes = field_diff(
        chat(system=base + "old" + "y" * 300), chat(system=base + "new" + "y" * 300)
    )
    assert len(changes) == 1
    assert "old" in str(changes[0].old) and "new" in str(changes[0].new)
    assert len(str(changes[0].old)) < 80 and str(changes[0].old).startswith("…")


def test_odd_keys_are_quoted_and_many_changes_summarised() -> None:
    changes = field_diff(chat(**{"a.b": 1}), chat(**{"a.b": 2}))
    assert changes[0].path == 'body["a.b"]'
    many = field_diff(chat(), chat(**{f"p{i}": i for i in range(12)}))
    assert describe(many).endswith("and 4 more changes")


def test_closest_prefers_the_fewest_changes_on_the_same_endpoint() -> None:
    target = chat(temperature=0.3)
    near = chat()
    far = chat(messages=[{"role": "user", "content": "something else"}], top_p=0.5)
    other_endpoint = copy.deepcopy(target)
    other_endpoint["path"] = "/v1/responses"
    found = closest(target, [far, other_endpoint, near])
    assert found is not None
    assert found[0] is near and 0 < found[1] < 1
    assert closest(target, [other_endpoint]) is None
    assert closest(target, [copy.deepcopy(target)]) == (target, 1.0)


def test_explain_makes_one_sentence() -> None:
    new = chat()
    new["body"]["messages"][1]["content"] = "Hello"
    text = explain(new, [chat()])
    assert text == (
        "The closest recording of this endpoint differs in: messages[1].content: 'Hi' -> 'Hello'."
    )
    assert explain(new, []) is None


def test_closest_scales_linearly_with_the_candidates() -> None:
    # Ten times the candidates may cost about ten times as much, not a hundred: only the best
    # few are diffed in full. A ratio, so a busy machine slows both sides alike.
    history = [
        {"role": "user" if i % 2 else "assistant", "content": f"turn {i} " * 20} for i in range(30)
    ]
    candidates = [
        chat(messages=[*history, {"role": "user", "content": f"q{i}"}]) for i in range(3000)
    ]
    target = chat(messages=[*history, {"role": "user", "content": "q1234?"}])

    def best_time(count: int) -> float:
        times = []
        for _ in range(2):
            started = time.perf_counter()
            found = closest(target, candidates[:count])
            times.append(time.perf_counter() - started)
            assert found is not None
        return min(times)

    found = closest(target, candidates)
    assert found is not None
    assert describe(field_diff(found[0], target)).startswith("messages[30].content:")
    ratio = best_time(3000) / best_time(300)
    assert ratio < 30, f"3000 candidates took {ratio:.1f}x as long as 300 (linear: about 10x)"


def test_sketches_rank_the_closest_request_first() -> None:
    history = [{"role": "user", "content": f"turn {i}"} for i in range(40)]
    target = chat(messages=[*history, {"role": "user", "content": "last"}], temperature=0.3)
    near = chat(messages=[*history, {"role": "user", "content": "last"}])
    middle = chat(messages=[*history[:20], {"role": "user", "content": "last"}])
    far = chat(messages=[{"role": "user", "content": "unrelated"}], top_p=0.5)
    mine = sketch(target)
    assert len(mine) <= 128  # small enough to keep beside every recording
    scores = [resemblance(mine, sketch(r)) for r in (near, middle, far)]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[2]
    assert resemblance(mine, sketch(copy.deepcopy(target))) == 1.0
    assert endpoint(target) == ("POST", "api.openai.com", 443, "/v1/chat/completions")


def test_sketches_are_the_same_in_every_process() -> None:
    # They are stored beside recordings: Python's randomised str hash must not leak into them.
    code = (
        "import sys; from tests.test_diff import chat; from llmreel.core.diff import sketch;"
        "sys.stdout.write(sketch(chat(top_p=0.5)).hex())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }  # fmt: skip
    assert outputs == {sketch(chat(top_p=0.5)).hex()}
