"""`llmreel verify --live`: re-send recordings and report drift, against a fake upstream whose
answers are changed on purpose."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmreel.cli.main import main
from llmreel.storage.lmdbstore import LmdbStore
from llmreel.storage.records import Recording
from tests.conftest import ProxyThread
from tests.fakeupstream import FakeUpstream, Reply
from tests.test_e2e import openai_client

WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip


@pytest.fixture
def recorded(make_proxy: Callable[..., ProxyThread], fake: FakeUpstream, bundle: str, tmp_path: Path) -> Path:
    proxy = make_proxy()
    client = openai_client(proxy, fake, bundle)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    client.chat.completions.create(model="gpt-4o-mini", tools=WEATHER,  # type: ignore[arg-type]
                                   messages=[{"role": "user", "content": "Weather in Paris?"}])  # fmt: skip
    list(client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                        messages=[{"role": "user", "content": "Count to 3"}]))  # fmt: skip
    proxy.stop()
    fake.reset()
    return tmp_path / "store"


def verify(store: Path, fake: FakeUpstream, *args: str, key: bool = True) -> tuple[int, str, str]:
    env = {"SSL_CERT_FILE": fake.cert_path, "OPENAI_API_KEY": "sk-live-000000000000000000" if key else ""}
    result = CliRunner().invoke(main, ["verify", "--live", "--store", str(store), *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def _changed_shape(reply: Reply) -> Reply:
    if reply.events is not None or not reply.body:
        return reply
    doc = json.loads(reply.body)
    doc["created"] = str(doc.get("created"))  # a number that became a string
    doc["service_tier_v2"] = "default"  # a field that appeared
    doc.pop("system_fingerprint", None)  # a field that vanished
    for choice in doc.get("choices", []):
        for call in choice.get("message", {}).get("tool_calls") or []:
            call["function"]["name"] = "get_forecast"  # the tool structure changed
    return dataclasses.replace(reply, body=json.dumps(doc).encode())


def test_unchanged_answers_are_no_drift(recorded: Path, fake: FakeUpstream) -> None:
    code, out, err = verify(recorded, fake)
    assert code == 0, out + err
    assert "3 recording(s) re-sent, 0 drifted" in out
    assert len(fake.requests) == 3
    assert all(r.header("authorization") == "Bearer sk-live-000000000000000000" for r in fake.requests)


def test_a_changed_shape_is_drift_and_update_records_it(recorded: Path, fake: FakeUpstream) -> None:
    fake.rewrite = _changed_shape
    try:
        code, out, _ = verify(recorded, fake)
        assert code == 1
        assert "added service_tier_v2" in out
        assert "removed system_fingerprint" in out
        assert "type changed created: number -> string" in out
        assert "tool calls [get_weather(city)] -> [get_forecast(city)]" in out
        code, out, _ = verify(recorded, fake, "--json")
        report = json.loads(out)
        assert code == 1 and report["checked"] == 3 and report["drifted"] == 2
        streamed = [r for r in report["results"] if not r["drifted"]]
        assert len(streamed) == 1 and streamed[0]["drift"]["added"] == []
        code, _, _ = verify(recorded, fake, "--update")
        assert code == 0
        code, out, _ = verify(recorded, fake)  # the new answers are now the recordings
        assert code == 0, out
    finally:
        fake.rewrite = None


def test_without_a_key_or_network_it_says_so_and_exits_2(recorded: Path, fake: FakeUpstream, tmp_path: Path) -> None:
    code, _, err = verify(recorded, fake, key=False)
    assert code == 2 and "no OPENAI_API_KEY in the environment" in err
    assert fake.requests == []
    unreachable = tmp_path / "unreachable"
    with LmdbStore(unreachable) as store:
        store.put(Recording(key="k" * 32, namespace="default", status=200, headers=[], body=b"{}",
                            request={"method": "POST", "scheme": "http", "host": "127.0.0.1", "port": 9,
                                     "path": "/v1/chat/completions", "query": [], "headers": {},
                                     "body": {"model": "gpt-4o-mini"}}))  # fmt: skip
    code, _, err = verify(unreachable, fake)
    assert code == 2 and "could not reach 127.0.0.1" in err


def test_without_live_it_is_the_offline_check(recorded: Path) -> None:
    result = CliRunner().invoke(main, ["verify", "--store", str(recorded)])
    assert result.exit_code == 0 and "3 recordings verified" in result.stdout
