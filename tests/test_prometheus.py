"""Metrics against a real Prometheus: exact tokens, hand-computed costs, every dashboard query.

A real Prometheus (Debian's package, installed by .ci/run) scrapes a live llmreel while the
official SDKs send traffic through it to three fake upstreams, one per provider.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ProxyThread, need_binary, wait_until
from tests.dashboards import dashboard_queries
from tests.fakeupstream import FakeUpstream

ROOT = Path(__file__).parent.parent
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")
# USD per token, from the providers' price pages (and genai-prices), for hand-computed costs.
GPT_4O_MINI = {"input": 0.15e-6, "cache_read": 0.075e-6, "output": 0.60e-6}
CLAUDE_SONNET_4 = {"input": 3e-6, "cache_read": 0.30e-6, "cache_write": 3.75e-6, "output": 15e-6}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, FakeUpstream]]:
    fakes = {name: FakeUpstream(tls=True).start() for name in ("openai", "anthropic", "gemini")}
    yield fakes
    for fake in fakes.values():
        fake.stop()


@pytest.fixture
def metered_proxy(
    make_proxy: Callable[..., ProxyThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> ProxyThread:
    trusted = tmp_path / "upstream-cas.pem"
    trusted.write_text("".join(Path(f.cert_path).read_text() for f in upstreams.values()))
    return make_proxy(
        metrics_port=free_port(),
        hosts=[f"127.0.0.1:{fake.port}={name}" for name, fake in upstreams.items()],
        sets=[f"ssl_verify_upstream_trusted_ca={trusted}"],
    )


@pytest.fixture
def prometheus(metered_proxy: ProxyThread, tmp_path: Path) -> Iterator[str]:
    binary = need_binary("prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: llmreel\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metered_proxy.recorder.metrics_port}']}}]\n"
    )
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"prometheus did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def send_traffic(proxy: ProxyThread, up: dict[str, FakeUpstream], bundle: str) -> int:
    """A mixed session: misses, hits, streams, cache tokens, an unpriced model, errors."""
    http = dict(proxy=proxy.url, verify=ssl.create_default_context(cafile=bundle))
    oai = openai.OpenAI(base_url=f"{up['openai'].url}/v1", api_key="sk-test-000000000000000000",
                        http_client=openai.DefaultHttpxClient(**http), max_retries=0)  # fmt: skip
    ant = anthropic.Anthropic(base_url=up["anthropic"].url, api_key="sk-ant-test-000000000000000",
                              http_client=anthropic.DefaultHttpxClient(**http), max_retries=0)  # fmt: skip
    hello = [{"role": "user", "content": "Hello there, how are you today?"}]
    requests = 0
    for _ in range(2):  # the second round is all hits
        oai.chat.completions.create(model="gpt-4o-mini", messages=hello, extra_headers={"x-fake-cached-tokens": "4"})  # type: ignore[arg-type]
        list(oai.chat.completions.create(model="gpt-4o-mini", messages=hello, stream=True,  # type: ignore[arg-type]
                                         stream_options={"include_usage": True}))  # fmt: skip
        list(oai.responses.create(model="gpt-4o-mini", input="Stream a fact", stream=True))
        oai.embeddings.create(model="text-embedding-3-small", input="metered")
        ant.messages.create(model="claude-sonnet-4-20250514", max_tokens=50, messages=hello,  # type: ignore[arg-type]
                            extra_headers={"x-fake-cached-tokens": "6", "x-fake-cache-write-tokens": "3"})  # fmt: skip
        with ant.messages.stream(model="claude-sonnet-4-20250514", max_tokens=50, messages=hello) as s:  # type: ignore[arg-type]
            s.get_final_message()
        with httpx.Client(**http) as client:  # type: ignore[arg-type]
            base = f"{up['gemini'].url}/v1beta/models/gemini-2.5-flash"
            body = {"contents": [{"role": "user", "parts": [{"text": "Hello Gemini"}]}]}
            assert client.post(f"{base}:generateContent", json=body).status_code == 200
            assert client.post(f"{base}:streamGenerateContent?alt=sse", json=body).status_code == 200
        oai.chat.completions.create(model="llmreel-private-model", messages=hello)  # type: ignore[arg-type]
        requests += 9
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "fail"}], extra_headers={"x-fake-status": "500"})  # type: ignore[arg-type]
    return requests + 1


def scrape(proxy: ProxyThread) -> str:
    return httpx.get(f"http://127.0.0.1:{proxy.recorder.metrics_port}/metrics").text


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def query(prometheus: str, promql: str) -> dict[str, Any]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    body: dict[str, Any] = response.json()
    assert response.status_code == 200 and body["status"] == "success", (promql, body)
    return body


def wait_for(prometheus: str, promql: str, expected: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = query(prometheus, promql)["data"]["result"]
        if result and float(result[0]["value"][1]) == expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"{promql} never reached {expected}")


def test_metrics_match_the_upstream_and_every_dashboard_query_returns_data(
    metered_proxy: ProxyThread, upstreams: dict[str, FakeUpstream], prometheus: str, bundle: str
) -> None:
    for fake in upstreams.values():
        fake.reset()
    total = send_traffic(metered_proxy, upstreams, bundle)
    text = scrape(metered_proxy)

    # Tokens: exactly what the upstreams billed, by provider and type (hits billed nothing).
    billed: dict[tuple[str, str], float] = defaultdict(float)
    for name, fake in upstreams.items():
        for usage in fake.billed:
            for kind in TOKEN_TYPES:
                billed[(name, kind)] += usage[kind]
    exported: dict[tuple[str, str], float] = defaultdict(float)
    for labels, value in samples(text, "llmreel_tokens_total"):
        exported[(labels["provider"], labels["type"])] += value
    assert {k: v for k, v in exported.items() if v} == {k: v for k, v in billed.items() if v}
    assert billed[("anthropic", "cache_read")] > 0 and billed[("anthropic", "cache_write")] > 0
    assert billed[("openai", "cache_read")] > 0

    # The second round was all hits: saved tokens equal the first round's billed tokens.
    saved = sum(v for labels, v in samples(text, "llmreel_saved_tokens_total") if labels["type"] == "input")
    assert saved == sum(v for (p, k), v in billed.items() if k == "input")

    # Cost: computed by hand from the billed usage and list prices.
    def cost(name: str, model: str, prices: dict[str, float]) -> float:
        total_usd = 0.0
        for u in upstreams[name].billed:
            if u["model"] != model:
                continue
            uncached = u["input"] - u["cache_read"] - u["cache_write"]
            total_usd += uncached * prices["input"] + u["output"] * prices["output"]
            total_usd += u["cache_read"] * prices["cache_read"] + u["cache_write"] * prices.get("cache_write", 0)
        return total_usd

    costs = {(lb["provider"], lb["model"]): v for lb, v in samples(text, "llmreel_cost_usd_total")}
    assert costs[("openai", "gpt-4o-mini")] == pytest.approx(cost("openai", "gpt-4o-mini", GPT_4O_MINI), rel=1e-9)
    assert costs[("anthropic", "claude-sonnet-4-20250514")] == pytest.approx(
        cost("anthropic", "claude-sonnet-4-20250514", CLAUDE_SONNET_4), rel=1e-9
    )
    unpriced = {(lb["provider"], lb["model"]): v for lb, v in samples(text, "llmreel_unpriced_requests_total")}
    assert unpriced == {("openai", "llmreel-private-model"): 1.0}
    assert ("openai", "llmreel-private-model") not in costs

    # promtool lints a real scrape.
    lint = subprocess.run([need_binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    # Prometheus has scraped all of it; then every dashboard query is valid and has data.
    wait_for(prometheus, "sum(llmreel_requests_total)", float(total))
    queries = dashboard_queries(ROOT / "dashboards" / "llmreel.json")
    assert len(queries) >= 10

    def without_data() -> list[str]:
        return [q for q in queries if not query(prometheus, q)["data"]["result"]]

    # rate() needs two scrapes of the final values: poll until the next ones have come in.
    try:
        wait_until(lambda: not without_data(), "data for every dashboard query")
    except AssertionError:
        raise AssertionError(f"dashboard queries without data: {without_data()}") from None
