"""llmreel under load and faults: it must never be why a call fails or a recording is lost.

Real sockets throughout: the fake HTTPS upstream, a real proxy (in a thread, or `llmreel serve`
as a process where signals or RSS matter), real LMDB. Timing is never asserted; what is
asserted is what the clients got, what the upstream was asked (and billed), what the store holds
and what the metrics count.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import logging
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest

from bench.soak import KINDS, audit_store, llm_body
from llmreel.addons.recorder import Recorder
from llmreel.storage.lmdbstore import LmdbStore
from llmreel.storage.records import Recording
from tests.conftest import ProxyThread, http_client, wait_until
from tests.fakeupstream import FakeUpstream
from tests.test_badinput import (
    CHAT_PATH,
    RawRequest,
    ScriptedUpstream,
    assert_still_serving,
    chat_body,
    chunk,
    fake_reply,
    http_response,
    requests_total,
    reset,
    response_head,
    stopped_store_keys,
)
from tests.test_cli import LLMREEL, serve_args, start_serve

MakeProxy = Callable[..., ProxyThread]


@dataclass(frozen=True)
class Job:
    """One call a load-test client makes."""

    kind: str
    prompt: str
    fault_status: int | None = None

    def send(self, client: httpx.Client, upstream: str) -> httpx.Response:
        headers = {"x-fake-status": str(self.fault_status)} if self.fault_status else {}
        return client.post(
            upstream + KINDS[self.kind][0], json=llm_body(self.kind, self.prompt), headers=headers
        )


def exchange_log(proxy: ProxyThread) -> list[Any]:
    """Every exchange the proxy accounts for from now on (the addon's sink hook)."""
    seen: list[Any] = []
    proxy.recorder.sinks.append(seen.append)
    return seen


def overlapping_clients(
    proxy: ProxyThread, bundle: str, fake: FakeUpstream, count: int
) -> list[httpx.Client]:
    """Clients whose tunnels (CONNECT + TLS) are already open, so their LLM calls overlap."""
    clients = [http_client(proxy, bundle) for _ in range(count)]
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        list(pool.map(lambda c: c.get(f"{fake.url}/warm-up"), clients))  # not an LLM call
    return clients


def run_together(clients: list[httpx.Client], call: Callable[[httpx.Client], Any]) -> list[Any]:
    """Run `call` once per client, all released at the same moment."""
    barrier = threading.Barrier(len(clients))

    def go(client: httpx.Client) -> Any:
        barrier.wait(timeout=60)
        return call(client)

    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        return list(pool.map(go, clients))


def llm_call(fake: FakeUpstream, kind: str, prompt: str) -> tuple[str, dict[str, Any]]:
    """The URL and body of a call of `kind` to the fake upstream."""
    return fake.url + KINDS[kind][0], llm_body(kind, prompt)


def llm_posts(fake: FakeUpstream) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST"]


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------


def test_100_concurrent_clients_mixing_hits_misses_and_streams(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    proxy = make_proxy()
    exchanges = exchange_log(proxy)
    kinds = itertools.cycle(KINDS)
    distinct = [Job(next(kinds), f"load test prompt {i}") for i in range(140)]
    faults = [Job(next(kinds), f"load test fault {i}", fault_status=503) for i in range(20)]
    jobs = distinct * 2 + faults  # every distinct call twice: one miss, one hit
    random.Random(6).shuffle(jobs)
    per_client = [jobs[i::100] for i in range(100)]
    barrier = threading.Barrier(100)

    def client_session(my_jobs: list[Job]) -> list[tuple[Job, httpx.Response | Exception]]:
        results: list[tuple[Job, httpx.Response | Exception]] = []
        with http_client(proxy, bundle) as client:
            barrier.wait(timeout=60)
            for job in my_jobs:
                try:
                    results.append((job, job.send(client, fake.url)))
                except httpx.HTTPError as exc:
                    results.append((job, exc))
        return results

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        results = [r for batch in pool.map(client_session, per_client) for r in batch]

    errors = [(job, outcome) for job, outcome in results if isinstance(outcome, Exception)]
    assert errors == []
    replies = [(job, r) for job, r in results if isinstance(r, httpx.Response)]
    for job, reply in replies:
        assert reply.status_code == (job.fault_status or 200), (job, reply.text[:300])
    by_job: dict[Job, list[httpx.Response]] = {}
    for job, reply in replies:
        if job.fault_status is None:
            by_job.setdefault(job, []).append(reply)
    for job, pair in by_job.items():
        assert sorted(r.headers["llmreel-cache"] for r in pair) == ["hit", "miss"], job
        assert pair[0].content == pair[1].content, job  # the hit replays the miss byte for byte
    # The upstream saw each distinct call once (and each fault), and billed each success once.
    assert len(llm_posts(fake)) == len(distinct) + len(faults)
    assert len(fake.billed) == len(distinct)
    # Accounted exactly once each, in the metrics and in the exchange stream.
    assert requests_total(proxy) == len(jobs)
    assert requests_total(proxy, cache="hit") == len(distinct)
    assert len(exchanges) == len(jobs) and len({e.id for e in exchanges}) == len(jobs)
    # ... and in the persisted exchange log.
    proxy.recorder.exchange_log.flush()
    assert proxy.recorder.exchange_log.count() == len(jobs)
    # Recorded exactly the completed misses: the store's content is the set of distinct calls.
    miss_keys = {r.headers["llmreel-key"] for pair in by_job.values() for r in pair}
    assert len(miss_keys) == len(distinct)
    assert stopped_store_keys(proxy) == miss_keys


@pytest.mark.parametrize("kind", ["openai", "openai-stream", "anthropic-stream"])
def test_identical_concurrent_misses_make_one_upstream_call(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str, kind: str
) -> None:
    proxy = make_proxy()
    clients = overlapping_clients(proxy, bundle, fake, 12)
    url, body = llm_call(fake, kind, "all of us at once, please")
    # Long enough that every follower arrives while the leader is still upstream.
    delay = {"x-fake-delay-ms": "80" if KINDS[kind][1] else "800"}
    replies = run_together(clients, lambda c: c.post(url, json=body, headers=delay))
    for client in clients:
        client.close()
    assert [r.status_code for r in replies] == [200] * 12
    assert len(llm_posts(fake)) == 1
    assert len(fake.billed) == 1
    assert len({r.content for r in replies}) == 1  # ids are random per upstream call
    assert len({r.headers["content-type"] for r in replies}) == 1  # followers get the stream too
    assert sorted(r.headers["llmreel-cache"] for r in replies) == ["hit"] * 11 + ["miss"]


# --------------------------------------------------------------------------------------------
# Upstream faults
# --------------------------------------------------------------------------------------------

ERROR_CASES = [
    ("openai", 429),
    ("openai", 500),
    ("anthropic", 529),
    ("anthropic", 429),
    ("gemini", 503),
]


def comparable(reply: httpx.Response) -> tuple[int, Any, str | None, str | None]:
    """Status, body (minus the random request id) and the headers clients act on."""
    body = reply.json()
    if isinstance(body, dict):
        body.pop("request_id", None)
    return (
        reply.status_code,
        body,
        reply.headers.get("retry-after"),
        reply.headers.get("content-type"),
    )


@pytest.mark.parametrize(("kind", "status"), ERROR_CASES)
def test_upstream_error_statuses_pass_through_unchanged_and_are_not_cached(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str, kind: str, status: int
) -> None:
    proxy = make_proxy()
    url, body = llm_call(fake, kind, f"fail with {status}")
    knob = {"x-fake-status": str(status)}
    with httpx.Client(verify=fake.ssl_context()) as direct:
        expected = direct.post(url, json=body, headers=knob)
    with http_client(proxy, bundle) as client:
        failed = client.post(url, json=body, headers=knob)
        healthy = client.post(url, json=body)
        again = client.post(url, json=body)
    assert comparable(failed) == comparable(expected)
    assert failed.headers["llmreel-cache"] == "miss"
    assert (healthy.status_code, healthy.headers["llmreel-cache"]) == (200, "miss")
    assert again.headers["llmreel-cache"] == "hit"


def test_upstream_timeout_is_an_error_for_the_client_and_is_not_cached(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    # mitmproxy's inactivity timeout, lowered so a silent upstream trips it.
    proxy = make_proxy(sets=[f"ssl_verify_upstream_trusted_ca={fake.cert_path}", "tcp_timeout=1"])
    url = f"{fake.url}{CHAT_PATH}"
    body = chat_body("a very slow answer")
    with http_client(proxy, bundle) as client:
        try:
            outcome: int | str = client.post(
                url, json=body, headers={"x-fake-delay-ms": "4000"}
            ).status_code
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        after = client.post(url, json=body)
    assert outcome == "RemoteProtocolError" or (isinstance(outcome, int) and outcome >= 500)
    assert (after.status_code, after.headers["llmreel-cache"]) == (200, "miss")
    assert (
        requests_total(proxy, status_class="error") + requests_total(proxy, status_class="5xx") == 1
    )


def test_client_timeout_releases_the_call_for_the_next_client(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    proxy = make_proxy()
    url = f"{fake.url}{CHAT_PATH}"
    body = chat_body("an answer nobody waits for")
    with http_client(proxy, bundle) as client, pytest.raises(httpx.TimeoutException):
        client.post(url, json=body, headers={"x-fake-delay-ms": "3000"}, timeout=0.5)
    with http_client(proxy, bundle) as client:
        # Single flight must not park this call behind the abandoned one: it goes upstream.
        after = client.post(url, json=body)
    assert (after.status_code, after.headers["llmreel-cache"]) == (200, "miss")


def _resetting_upstream(
    head_seen: threading.Event, sock: socket.socket, request: RawRequest
) -> None:
    """Resets where the `x-reset` header says; answers normally without it. Mid-stream, it
    resets once the client has the response head (`head_seen`): an RST any earlier could
    discard what the proxy had not read yet."""
    reply = fake_reply(request)
    where = request.header("x-reset")
    if where == "before-response":
        reset(sock)
    elif where == "mid-body":
        whole = http_response(200, reply.headers, reply.body)
        sock.sendall(whole[: len(whole) - len(reply.body) // 2])
        reset(sock)
    elif where == "mid-stream":
        head = response_head(200, reply.headers, "transfer-encoding: chunked")
        sock.sendall(head + b"".join(chunk(event) for event in reply.events[:2]))
        head_seen.wait(30)
        reset(sock)
    elif reply.events is not None:
        sock.sendall(http_response(200, reply.headers, b"".join(reply.events)))
    else:
        sock.sendall(http_response(reply.status, reply.headers, reply.body))


@pytest.mark.parametrize("where", ["before-response", "mid-body", "mid-stream"])
def test_upstream_connection_reset_reaches_the_client_and_is_not_cached(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str, where: str
) -> None:
    proxy = make_proxy()
    body = chat_body(f"reset {where}", stream=where == "mid-stream")
    head_seen = threading.Event()
    upstream = ScriptedUpstream(functools.partial(_resetting_upstream, head_seen))
    with upstream, http_client(proxy, bundle) as client:
        url = f"{upstream.url}{CHAT_PATH}"
        failed: int | str
        try:
            with client.stream("POST", url, json=body, headers={"x-reset": where}) as reply:
                head_seen.set()
                reply.read()
            failed = reply.status_code
        except httpx.HTTPError as exc:
            failed = type(exc).__name__
        after = client.post(url, json=body)
        again = client.post(url, json=body)
    # Before a streamed body starts, mitmproxy answers 502; once it started, the client sees
    # the connection break, as it would without a proxy.
    assert failed == (502 if where != "mid-stream" else "RemoteProtocolError")
    assert (after.status_code, after.headers["llmreel-cache"]) == (200, "miss")
    assert again.headers["llmreel-cache"] == "hit"
    assert_still_serving(proxy, fake, bundle)


CUT_KINDS = ["openai-stream", "anthropic-stream", "gemini-stream"]


@pytest.mark.parametrize("kind", CUT_KINDS)
def test_stream_cut_by_the_upstream_is_logged_and_never_cached(
    make_proxy: MakeProxy,
    fake: FakeUpstream,
    bundle: str,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = make_proxy()
    url, body = llm_call(fake, kind, "cut me off half way")
    with caplog.at_level(logging.WARNING, logger="llmreel"), http_client(proxy, bundle) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(url, json=body, headers={"x-fake-cut-after": "2"})
        after = client.post(url, json=body)
    assert (after.status_code, after.headers["llmreel-cache"]) == (200, "miss")
    assert "not recorded" in caplog.text
    assert requests_total(proxy, status_class="error") == 1
    assert stopped_store_keys(proxy) == {after.headers["llmreel-key"]}


def test_anthropic_error_event_mid_stream_is_not_cached(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    proxy = make_proxy()
    url, body = llm_call(fake, "anthropic-stream", "overloaded half way")
    with http_client(proxy, bundle) as client:
        failed = client.post(url, json=body, headers={"x-fake-stream-error": "1"})
        after = client.post(url, json=body)
    assert failed.status_code == 200 and b"event: error" in failed.content
    assert after.headers["llmreel-cache"] == "miss"


def test_stream_abandoned_by_the_client_is_never_cached(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    proxy = make_proxy()
    seen = exchange_log(proxy)
    url, body = llm_call(fake, "openai-stream", "I will stop listening")
    with http_client(proxy, bundle) as client:
        with client.stream("POST", url, json=body, headers={"x-fake-delay-ms": "200"}) as live:
            first = next(live.iter_raw())
        # The proxy notices the hang-up while the upstream is still sending, and accounts for
        # the exchange; only then is the next identical call free of it.
        (abandoned,) = wait_until(lambda: list(seen), "the abandoned exchange being accounted for")
        after = client.post(url, json=body)
    assert first.startswith(b"data: ")
    assert (abandoned.error_type, abandoned.recorded) == ("client_disconnected", False)
    assert (after.status_code, after.headers["llmreel-cache"]) == (200, "miss")
    assert stopped_store_keys(proxy) == {after.headers["llmreel-key"]}


# --------------------------------------------------------------------------------------------
# Clients that go away at every stage
# --------------------------------------------------------------------------------------------


def proxy_address(proxy: ProxyThread) -> tuple[str, int]:
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def open_tunnel(proxy: ProxyThread, port: int) -> socket.socket:
    sock = socket.create_connection(proxy_address(proxy), timeout=10)
    sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 200"), reply
    return sock


def open_tls_tunnel(proxy: ProxyThread, bundle: str, port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=bundle)
    return context.wrap_socket(open_tunnel(proxy, port), server_hostname="127.0.0.1")


def request_bytes(fake: FakeUpstream, body: bytes, extra: str = "") -> tuple[bytes, bytes]:
    head = (
        f"POST {CHAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{fake.port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode(), body


@dataclass
class Stage:
    """Where a client hangs up, and how (`abrupt`: an RST rather than a FIN)."""

    name: str
    abrupt: bool = False


STAGES = [
    Stage("after-tcp-connect"),
    Stage("mid-connect-line"),
    Stage("after-connect"),
    Stage("mid-tls-handshake"),
    Stage("after-tls"),
    Stage("after-request-head"),
    Stage("mid-request-body", abrupt=True),
    Stage("awaiting-response"),
    Stage("after-response-head"),
    Stage("mid-stream"),
    Stage("mid-stream-reset", abrupt=True),
    Stage("garbage-instead-of-http"),
]


def hang_up_at(
    stage: Stage, proxy: ProxyThread, bundle: str, fake: FakeUpstream, prompt: str
) -> None:
    """Drive one exchange by hand up to `stage`, then hang up."""
    body = orjson.dumps(chat_body(prompt, stream=True))
    head, payload = request_bytes(fake, body, "x-fake-delay-ms: 150\r\n")
    sock: socket.socket
    if stage.name == "after-tcp-connect":
        sock = socket.create_connection(proxy_address(proxy), timeout=10)
    elif stage.name == "mid-connect-line":
        sock = socket.create_connection(proxy_address(proxy), timeout=10)
        sock.sendall(b"CONNECT 127.0.0.1:")
    elif stage.name == "garbage-instead-of-http":
        sock = socket.create_connection(proxy_address(proxy), timeout=10)
        sock.sendall(os.urandom(4096))
    elif stage.name == "after-connect":
        sock = open_tunnel(proxy, fake.port)
    elif stage.name == "mid-tls-handshake":
        sock = open_tunnel(proxy, fake.port)
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40))
    else:
        sock = open_tls_tunnel(proxy, bundle, fake.port)
        if stage.name == "after-request-head":
            sock.sendall(head)
        elif stage.name == "mid-request-body":
            sock.sendall(head + payload[: len(payload) // 2])
        elif stage.name != "after-tls":
            sock.sendall(head + payload)
            if stage.name != "awaiting-response":
                received = sock.recv(65536)
                assert received.startswith(b"HTTP/1.1 200"), received
                if stage.name.startswith("mid-stream"):
                    sock.recv(65536)
    if stage.abrupt:
        reset(sock)
    else:
        sock.close()


def test_proxy_survives_clients_hanging_up_at_every_stage(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = make_proxy()
    seen = exchange_log(proxy)
    with caplog.at_level(logging.WARNING):
        for stage in STAGES:
            hang_up_at(stage, proxy, bundle, fake, f"hang up {stage.name}")
        # Every call that reached the upstream is accounted for once the proxy has noticed its
        # client hang up (how many get that far varies with timing).
        wait_until(
            lambda: {e.request_body for e in seen} >= {r.body for r in llm_posts(fake)},
            "the proxy noticing the hang-ups",
        )
        assert_still_serving(proxy, fake, bundle)
        # Stopping ends whatever is left, so any error handling it causes is logged by now.
        keys = stopped_store_keys(proxy)
    assert not [r for r in caplog.records if "Addon error" in r.getMessage()]
    # Only the healthy call was recorded: nothing any of the abandoned exchanges started.
    assert [e.recorded for e in seen].count(True) == 1
    assert len(keys) == 1


# --------------------------------------------------------------------------------------------
# Process crashes, full stores, bad stores, shared stores
# --------------------------------------------------------------------------------------------


def proxy_url(ready_line: str) -> str:
    return ready_line.split("regular ", 1)[1].split(" ", 1)[0]


def record_until(
    url: str,
    bundle: str,
    fake: FakeUpstream,
    tag: str,
    stop: threading.Event,
    keys: list[str],
    limit: int = 200,
) -> None:
    """Record new calls of every kind through the proxy at `url` until `stop` or `limit`."""
    context = ssl.create_default_context(cafile=bundle)
    kinds = itertools.cycle(KINDS)
    with httpx.Client(proxy=url, verify=context, timeout=15) as client:
        for i in range(limit):
            if stop.is_set():
                return
            job = Job(next(kinds), f"{tag} call {i}")
            try:
                reply = job.send(client, fake.url)
            except httpx.HTTPError:
                return  # the proxy is gone
            if reply.status_code == 200 and reply.headers["llmreel-cache"] == "miss":
                keys.append(reply.headers["llmreel-key"])


def replay_url(rec: Recording) -> str:
    req = rec.request
    query = f"?{urlencode([tuple(pair) for pair in req['query']])}" if req["query"] else ""
    return f"{req['scheme']}://{req['host']}:{req['port']}{req['path']}{query}"


def test_kill_9_during_heavy_recording_leaves_a_sound_store(
    tmp_path: Path, confdir: Path, fake: FakeUpstream, bundle: str
) -> None:
    proc, line = start_serve(*serve_args(tmp_path, confdir, fake), cwd=tmp_path)
    keys: list[str] = []
    stop = threading.Event()
    workers = [
        threading.Thread(
            target=record_until, args=(proxy_url(line), bundle, fake, f"k{i}", stop, keys)
        )
        for i in range(12)
    ]
    try:
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 40
        while len(keys) < 100 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # while the writer thread is busy committing
        proc.wait(10)
    finally:
        stop.set()
        proc.kill()
        for worker in workers:
            worker.join(30)
        proc.communicate(timeout=10)
    assert len(keys) >= 50, "not enough traffic was recorded before the kill"
    store = tmp_path / "store"
    audit = audit_store(store)  # opens, every entry unpacks, sits under its digest, is complete
    assert audit.corrupt == []
    assert audit.entries > 0
    with LmdbStore(store, create=False) as opened:
        sample = random.Random(9).sample(list(opened.iter()), min(20, audit.entries))
    offline, line = start_serve(
        *serve_args(tmp_path, confdir, fake, "--mode", "offline"), cwd=tmp_path
    )
    try:
        with httpx.Client(
            proxy=proxy_url(line), verify=ssl.create_default_context(cafile=bundle)
        ) as client:
            for rec in sample:
                reply = client.post(replay_url(rec), json=rec.request["body"])
                assert (reply.status_code, reply.headers["llmreel-cache"]) == (rec.status, "hit")
                assert reply.content == rec.body
    finally:
        offline.send_signal(signal.SIGTERM)
        offline.communicate(timeout=30)


def write_errors(proxy: ProxyThread, reason: str) -> float:
    """`llmreel_store_write_errors_total{reason}`: counted on the proxy's loop once the store's
    writer thread reports the failure, so a test polls for it."""
    value = proxy.recorder.registry.get_sample_value(
        "llmreel_store_write_errors_total", {"reason": reason}
    )
    return float(value or 0)


def test_full_store_stops_recording_loudly_but_traffic_keeps_flowing(
    make_proxy: MakeProxy,
    fake: FakeUpstream,
    bundle: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A store that may not grow past 1 MiB: a few 200 kB recordings fill it.
    capped = functools.partial(LmdbStore, map_size=1 << 20, max_map_size=1 << 20)
    monkeypatch.setattr(
        "llmreel.addons.recorder.Recorder", functools.partial(Recorder, store_factory=capped)
    )
    proxy = make_proxy()
    url = f"{fake.url}{CHAT_PATH}"
    big = {"x-fake-body-bytes": "200000"}
    with caplog.at_level(logging.ERROR, logger="llmreel"), http_client(proxy, bundle) as client:
        replies = [
            client.post(url, json=chat_body(f"fill the store {i}"), headers=big) for i in range(12)
        ]
        proxy.recorder.store.flush(10)
        failures = wait_until(lambda: write_errors(proxy, "map_full"), "a write failure being counted")
        first_again = client.post(url, json=chat_body("fill the store 0"))
        later = client.post(url, json=chat_body("after the store filled up"))
    assert [r.status_code for r in replies] == [200] * 12
    assert first_again.headers["llmreel-cache"] == "hit"  # what was recorded still replays
    assert (later.status_code, later.headers["llmreel-cache"]) == (200, "miss")
    assert failures >= 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(proxy.settings.store in m and "prune" in m for m in errors), errors
    proxy.stop()
    audit = audit_store(Path(proxy.settings.store))
    assert audit.corrupt == [] and 0 < audit.entries < 12


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs: a real full disk (ENOSPC), where this machine lets us mount one."""
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_full_disk_stops_recording_loudly_but_traffic_keeps_flowing(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str, small_disk: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    proxy = make_proxy(store=str(small_disk / "store"))
    url = f"{fake.url}{CHAT_PATH}"
    big = {"x-fake-body-bytes": "300000", "x-fake-gzip": "0"}
    with caplog.at_level(logging.ERROR, logger="llmreel"), http_client(proxy, bundle) as client:
        replies = [client.post(url, json=chat_body(f"fill the disk {i}"), headers=big) for i in range(16)]
        proxy.recorder.store.flush(10)
        failures = wait_until(lambda: write_errors(proxy, "disk_full"), "a write failure being counted")
        first_again = client.post(url, json=chat_body("fill the disk 0"), headers=big)
        later = client.post(url, json=chat_body("after the disk filled up"))
    assert [r.status_code for r in replies] == [200] * 16
    assert first_again.headers["llmreel-cache"] == "hit"
    assert (later.status_code, later.headers["llmreel-cache"]) == (200, "miss")
    assert failures >= 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("disk is full" in m for m in errors), errors
    proxy.stop()


def _recording(i: int) -> Recording:
    return Recording(
        key=f"{i:032x}",
        namespace="default",
        request={"i": i},
        status=200,
        headers=[],
        body=os.urandom(3000),
    )


def build_store(path: Path, entries: int = 200) -> None:
    with LmdbStore(path) as store:
        for i in range(entries):
            store.put(_recording(i))


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)


def noise(size: int) -> bytes:
    """Garbage, the same on every run, so a failure reproduces."""
    return random.Random(size).randbytes(size)


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "random-bytes": lambda data: data.write_bytes(noise(256 * 1024)),
    "zeroed-header": lambda data: _overwrite(data, 0, bytes(8192)),
    "truncated": lambda data: os.truncate(data, 8192),
}


def serve_once(store: Path, confdir: Path) -> subprocess.CompletedProcess[str]:
    """`llmreel serve` on `store`, expected to exit by itself (it cannot start)."""
    argv = [
        LLMREEL,
        "serve",
        "--port=0",
        "--metrics-port=0",
        f"--store={store}",
        f"--confdir={confdir}",
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def assert_refused_with_advice(
    result: subprocess.CompletedProcess[str], store: Path, advice: str
) -> None:
    assert result.returncode > 0, (
        f"exit {result.returncode} (a negative code is a signal)\n{result.stderr}"
    )
    assert "llmreel ready" not in result.stdout
    assert str(store) in result.stderr
    assert advice in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("how", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_store_is_refused_with_a_message_naming_it_and_what_to_do(
    tmp_path: Path, confdir: Path, how: Callable[[Path], None]
) -> None:
    store = tmp_path / "store"
    build_store(store)
    how(store / "data.mdb")
    assert_refused_with_advice(serve_once(store, confdir), store, "move it away")


def test_store_of_another_schema_version_is_refused_with_advice(
    tmp_path: Path, confdir: Path
) -> None:
    store = tmp_path / "store"
    build_store(store, entries=3)
    with LmdbStore(store) as opened:
        opened.write_raw([(b"meta", b"schema", b"99")])
    result = serve_once(store, confdir)
    assert_refused_with_advice(result, store, "export")
    assert "schema version 99" in result.stderr


def test_store_corrupt_inside_keeps_traffic_flowing_and_says_what_to_do(
    tmp_path: Path, confdir: Path, fake: FakeUpstream, bundle: str
) -> None:
    # Garbage past the meta pages: LMDB opens the file and fails on the pages it reads later.
    # A process, not a thread: a store this broken could crash the process that reads it.
    store = tmp_path / "store"
    build_store(store)
    data = store / "data.mdb"
    _overwrite(data, 3 * 8192, noise(data.stat().st_size - 3 * 8192))
    proc = subprocess.Popen(
        [LLMREEL, "serve", *serve_args(tmp_path, confdir, fake)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    ready = proc.stdout.readline()
    if not ready.startswith("llmreel ready"):  # refusing to start is fine, with advice
        stdout, stderr = proc.communicate(timeout=30)
        refused = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        assert_refused_with_advice(refused, store, "move it away")
        return
    try:
        context = ssl.create_default_context(cafile=bundle)
        with httpx.Client(proxy=proxy_url(ready), verify=context, timeout=30) as client:
            url = f"{fake.url}{CHAT_PATH}"
            statuses = [
                client.post(url, json=chat_body(f"corrupt {i}")).status_code for i in range(3)
            ]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr[-3000:]
    assert statuses == [200] * 3
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert errors and all(str(store) in e and "move it away" in e for e in errors), errors


def test_two_processes_recording_into_one_store_lose_nothing(
    tmp_path: Path, confdir: Path, fake: FakeUpstream, bundle: str
) -> None:
    started = [start_serve(*serve_args(tmp_path, confdir, fake), cwd=tmp_path) for _ in range(2)]
    urls = [proxy_url(line) for _, line in started]
    keys: list[str] = []
    never = threading.Event()
    # Four private clients per process, plus one per process recording the same shared calls.
    jobs = [(url, f"p{n}w{i}") for n, url in enumerate(urls) for i in range(4)]
    jobs += [(url, "shared") for url in urls]
    workers = [
        threading.Thread(target=record_until, args=(url, bundle, fake, tag, never, keys, 25))
        for url, tag in jobs
    ]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
    finally:
        for proc, _ in started:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in started:
            proc.communicate(timeout=30)
    assert [proc.returncode for proc, _ in started] == [0, 0]
    assert len(set(keys)) >= 2 * 4 * 25  # every private call was a miss in its process
    audit = audit_store(tmp_path / "store")
    assert audit.corrupt == []
    assert set(keys) <= audit.keys
