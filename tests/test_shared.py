"""The shared tier against a real redis-server: real `llmreel serve` processes with separate
LMDB stores, the fake upstream counting what reaches it, and Redis killed and restarted.

redis-server is Debian's package (.ci/run installs it); each test starts its own on a free
port, with a password, no files, and stops it by its PID. `LLMREEL_TEST_REDIS=valkey-server`
runs them against Valkey instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from llmreel.cli.main import main
from llmreel.engine import DEFAULTS, Engine, FlowState, ResponseInfo
from llmreel.storage.lmdbstore import LmdbStore
from llmreel.storage.records import Recording
from llmreel.storage.shared import (
    Breaker,
    SharedError,
    check_url,
    decode,
    encode,
    lease_key,
    masked,
    parse_recording_key,
    recording_key,
    recording_pattern,
    ttl_ms,
)
from tests.conftest import need_binary, wait_until
from tests.fakeupstream import FakeUpstream
from tests.test_cli import LLMREEL, free_port
from tests.test_engine import CHAT_RESPONSE, JSON_HEADERS, begin, sample

PASSWORD = "s3cret-redis-pw"
#: The machines that run the tests are shared and loaded: a Redis round trip can take longer than
#: the 50 ms default, and a timeout is (correctly) a skip of Redis, which these tests are not
#: about (a killed Redis refuses connections at once, whatever the timeout).
TIMEOUT = ("--shared-timeout", "2000")


# --- fast unit tests: keys, values, URLs, the breaker -----------------------------------------


def rec(
    namespace: str = "default", key: str = "ab" * 32, seq: int = 0, body: bytes = b"{}"
) -> Recording:
    return Recording(key=key, namespace=namespace, request={"method": "POST", "path": "/v1/x"}, status=200,
                     headers=[("content-type", "application/json")], body=body, recorded_at=1000.0,
                     provider="openai", model="gpt-4o-mini", seq=seq)  # fmt: skip


@pytest.mark.parametrize(
    "namespace", ["default", "team:a", "a*b?[c]\\d", "ci@0123abcd", "x%3Ay", "é/ü"]
)
def test_recording_keys_round_trip_and_match_one_namespace(namespace: str) -> None:
    key = recording_key(namespace, "ab" * 32, 3)
    assert key.startswith("llmreel:v1:rec:")
    assert parse_recording_key(key) == (namespace, "ab" * 32, 3)
    assert key.count(":") == 5  # the namespace never adds a field
    pattern = recording_pattern(namespace)
    assert not set(pattern[:-1]) & set("*?[]\\")  # only the trailing glob
    assert key.startswith(pattern[:-1])
    assert not recording_key(namespace + "x", "ab" * 32).startswith(pattern[:-1])
    assert lease_key(namespace, "ab" * 32, 3).startswith("llmreel:v1:lease:")


def test_values_are_the_stores_packed_recordings_compressed_and_bounded() -> None:
    small = rec()
    assert decode(encode(small, 1 << 20)) == small
    big = rec(body=b'{"text": "' + b"all work and no play " * 5000 + b'"}')
    value = encode(big, 1 << 20)
    assert len(value) < len(big.body) / 10  # compressed
    assert decode(value) == big
    with pytest.raises(SharedError) as err:
        encode(big, len(value) - 1)
    assert err.value.reason == "too_large"
    with pytest.raises(SharedError) as err:
        decode(b"LRR2garbage")
    assert err.value.reason == "corrupt"


def test_ttl_follows_max_age() -> None:
    r = rec()
    assert ttl_ms(r, None, now=5000.0) is None
    assert ttl_ms(r, 60.0, now=1010.0) == 50_000
    assert ttl_ms(r, 60.0, now=2000.0) <= 0  # type: ignore[operator]


def test_urls_are_checked_and_passwords_masked() -> None:
    assert masked(f"redis://:{PASSWORD}@cache:6379/0") == "redis://***@cache:6379/0"
    assert masked(f"rediss://user:{PASSWORD}@cache/1") == "rediss://***@cache/1"
    assert masked("redis://cache:6379/0") == "redis://cache:6379/0"
    assert check_url("rediss://cache:6380/2")
    for bad in ("http://cache:6379", "redis://", "redis://cache/x"):
        with pytest.raises(ValueError) as err:
            check_url(bad.replace("cache", f":{PASSWORD}@cache"))
        assert PASSWORD not in str(err.value)


def test_breaker_backs_off_to_a_cap_and_closes_on_success() -> None:
    now = [0.0]
    breaker = Breaker(lambda: now[0])
    assert not breaker.is_open
    pauses = []
    for _ in range(10):
        breaker.failed()
        pauses.append(breaker.backoff_s)
    assert pauses[0] == 0.5 and pauses == sorted(pauses) and pauses[-1] == 30.0
    assert breaker.is_open
    now[0] = 31.0
    assert not breaker.is_open
    breaker.succeeded()
    breaker.failed()
    assert breaker.backoff_s == 0.5


# --- a real redis-server ----------------------------------------------------------------------


class Redis:
    def __init__(self, tmp: Path) -> None:
        # LLMREEL_TEST_REDIS=valkey-server runs the same tests against Valkey.
        self.binary = need_binary(
            os.environ.get("LLMREEL_TEST_REDIS", "redis-server"), "redis-server"
        )
        self.port = free_port()
        self.dir = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--requirepass", PASSWORD],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self._pong, "redis-server answering")
        return self

    def _pong(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def client(self) -> object:
        import redis

        return redis.Redis.from_url(self.url)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(tmp_path).start()
    yield server
    server.kill()


class Serve:
    """A real `llmreel serve` process with its own LMDB store."""

    def __init__(
        self, tmp: Path, name: str, confdir: Path, fake: FakeUpstream, *extra: str
    ) -> None:
        self.metrics_port = free_port()
        self.store = tmp / name
        args = ["--port", "0", "--metrics-port", str(self.metrics_port), "--store", str(self.store),
                "--confdir", str(confdir), "--set", f"ssl_verify_upstream_trusted_ca={fake.cert_path}",
                *extra]  # fmt: skip
        self.proc = subprocess.Popen([LLMREEL, "serve", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert self.proc.stdout is not None
        self.ready = self.proc.stdout.readline()
        if not self.ready.startswith("llmreel ready:"):
            self.proc.kill()
            raise AssertionError(f"no ready line: {self.ready!r} {self.proc.communicate()[1]}")
        match = re.search(r"regular (http://127\.0\.0\.1:\d+)", self.ready)
        assert match
        self.url = match.group(1)

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and not line.startswith("#"))  # fmt: skip

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        _, stderr = self.proc.communicate(timeout=30)
        return stderr


@pytest.fixture
def serve(tmp_path: Path, confdir: Path, fake: FakeUpstream) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(name: str, *extra: str) -> Serve:
        proc = Serve(tmp_path, name, confdir, fake, *extra)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.proc.poll() is None:
            stderr = proc.stop()
            assert "Traceback" not in stderr, stderr
            assert PASSWORD not in stderr


def chat(
    fake: FakeUpstream, proxy: Serve, bundle: str, prompt: str, **headers: str
) -> httpx.Response:
    with httpx.Client(
        proxy=proxy.url, verify=ssl.create_default_context(cafile=bundle), timeout=60
    ) as client:
        return client.post(f"{fake.url}/v1/chat/completions", headers=headers,
                           json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]})  # fmt: skip


def test_two_proxies_share_recordings_and_offline_mode_reads_redis(
    redis_server: Redis, serve: Callable[..., Serve], fake: FakeUpstream, bundle: str
) -> None:
    a = serve("a", "--shared", redis_server.url, *TIMEOUT)
    b = serve("b", "--shared", redis_server.url, *TIMEOUT)
    assert "shared redis://***@127.0.0.1" in a.ready and PASSWORD not in a.ready
    first = chat(fake, a, bundle, "hello from a")
    assert first.status_code == 200 and first.headers["llmreel-cache"] == "miss"
    # The write to Redis follows the local commit, in the background: poll for it.
    wait_until(lambda: a.metric("llmreel_shared_writes_total") == 1, "the recording reaching Redis")
    second = chat(fake, b, bundle, "hello from a")
    assert second.headers["llmreel-cache"] == "hit"
    assert second.json() == first.json()
    assert len(fake.requests) == 1
    assert b.metric("llmreel_shared_hits_total") == 1
    # The hit was copied into b's own store.
    b.stop()
    wait_until(lambda: LmdbStore(str(b.store)).stats().entries == 1, "the copy in b's store")
    # A fresh offline proxy with an empty store serves it from Redis.
    c = serve("c", "--mode", "offline", "--shared", redis_server.url, *TIMEOUT)
    third = chat(fake, c, bundle, "hello from a")
    assert third.headers["llmreel-cache"] == "hit" and third.json() == first.json()
    assert chat(fake, c, bundle, "never recorded").status_code == 412
    assert len(fake.requests) == 1


def test_single_flight_across_two_proxies(
    redis_server: Redis, serve: Callable[..., Serve], fake: FakeUpstream, bundle: str
) -> None:
    proxies = [
        serve("a", "--shared", redis_server.url, *TIMEOUT),
        serve("b", "--shared", redis_server.url, *TIMEOUT),
    ]

    def call(i: int) -> httpx.Response:
        # x-fake-delay-ms keeps the leader's call in flight while the others arrive.
        return chat(
            fake, proxies[i % 2], bundle, "the same question", **{"x-fake-delay-ms": "1500"}
        )

    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(call, range(20)))
    assert [r.status_code for r in replies] == [200] * 20
    assert len(fake.requests) == 1, [p.metric("llmreel_shared_errors_total") for p in proxies]
    assert len({r.content for r in replies}) == 1
    assert sorted(r.headers["llmreel-cache"] for r in replies).count("miss") == 1


def test_redis_killed_mid_traffic_costs_no_call_and_sharing_resumes_after_restart(
    redis_server: Redis, serve: Callable[..., Serve], fake: FakeUpstream, bundle: str
) -> None:
    a = serve("a", "--shared", redis_server.url, *TIMEOUT)
    b = serve("b", "--shared", redis_server.url, *TIMEOUT)
    statuses = []
    for i in range(30):
        if i == 10:
            redis_server.kill()
        proxy = (a, b)[i % 2]
        statuses.append(chat(fake, proxy, bundle, f"question {i // 4}").status_code)
    assert statuses == [200] * 30
    assert a.metric("llmreel_shared_errors_total") + b.metric("llmreel_shared_errors_total") > 0
    redis_server.start()  # same port, empty

    def shared_again() -> bool:
        prompt = f"after restart {time.monotonic()}"
        chat(fake, a, bundle, prompt)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and a.metric("llmreel_shared_writes_total") == 0:
            time.sleep(0.05)
        return chat(fake, b, bundle, prompt).headers["llmreel-cache"] == "hit"

    wait_until(shared_again, "sharing through the restarted redis-server", timeout=90)


def test_a_value_over_the_limit_stays_local(
    redis_server: Redis, serve: Callable[..., Serve], fake: FakeUpstream, bundle: str
) -> None:
    a = serve("a", "--shared", redis_server.url, "--shared-max-bytes", "600", *TIMEOUT)
    b = serve("b", "--shared", redis_server.url, *TIMEOUT)
    big = {"x-fake-body-bytes": "20000"}
    assert chat(fake, a, bundle, "a long answer", **big).headers["llmreel-cache"] == "miss"
    wait_until(
        lambda: a.metric('llmreel_shared_errors_total{reason="too_large"}') == 1,
        "too_large counted",
    )
    assert chat(fake, a, bundle, "a long answer", **big).headers["llmreel-cache"] == "hit"  # local
    assert chat(fake, b, bundle, "a long answer", **big).headers["llmreel-cache"] == "miss"
    assert len(fake.requests) == 2


def test_push_and_pull_round_trip(redis_server: Redis, tmp_path: Path) -> None:
    source = tmp_path / "source"
    recs = [rec("default", f"{i:064x}") for i in range(5)] + [rec("team:x", "cd" * 32, seq=2)]
    with LmdbStore(str(source)) as store:
        store.put_many(recs)
    runner = CliRunner()
    pushed = runner.invoke(
        main, ["cache", "push", "--shared", redis_server.url, "--store", str(source)]
    )
    assert pushed.exit_code == 0, pushed.output
    assert "pushed 6 recordings" in pushed.output and PASSWORD not in pushed.output
    pulled = runner.invoke(
        main, ["cache", "pull", "--shared", redis_server.url, "--store", str(tmp_path / "copy")]
    )
    assert pulled.exit_code == 0, pulled.output
    assert "pulled 6 recordings" in pulled.output
    with LmdbStore(str(tmp_path / "copy")) as copy:
        assert sorted(copy.iter(), key=lambda r: r.key) == sorted(recs, key=lambda r: r.key)
    only = runner.invoke(main, ["cache", "pull", "--shared", redis_server.url, "--namespace", "team:x",
                                "--store", str(tmp_path / "export")])  # fmt: skip
    assert "pulled 1 recordings" in only.output
    bad = runner.invoke(main, ["cache", "pull", "--shared", f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0",
                               "--store", str(tmp_path / "none")])  # fmt: skip
    assert bad.exit_code == 1 and "cannot reach redis://***@127.0.0.1" in bad.output
    assert PASSWORD not in bad.output


def test_a_crashed_leaders_lease_expires_and_a_follower_takes_over(
    redis_server: Redis, serve: Callable[..., Serve], fake: FakeUpstream, bundle: str
) -> None:
    a = serve("a", "--shared", redis_server.url, *TIMEOUT)
    b = serve("b", "--shared", redis_server.url, *TIMEOUT)
    slow = {"x-fake-delay-ms": "30000"}  # the leader is still waiting on it when it dies
    with ThreadPoolExecutor(2) as pool:
        leader = pool.submit(chat, fake, a, bundle, "who leads?", **slow)
        wait_until(lambda: len(fake.requests) == 1, "the leader's call upstream")
        leases = redis_server.client().keys("llmreel:v1:lease:*")  # type: ignore[attr-defined]
        assert len(leases) == 1
        follower = pool.submit(chat, fake, b, bundle, "who leads?", **{"x-fake-delay-ms": "0"})
        wait_until(
            lambda: b.metric('llmreel_shared_seconds_count{op="lease"}') >= 2,
            "b waiting on the lease",
        )
        assert not follower.done()
        a.proc.send_signal(signal.SIGKILL)  # the leader dies without releasing its lease
        a.proc.wait(10)
        with pytest.raises(httpx.HTTPError):
            leader.result(60)
        reply = follower.result(60)  # after the lease's life (10 s), b leads and goes upstream
    assert reply.status_code == 200 and reply.headers["llmreel-cache"] == "miss"
    assert len(fake.requests) == 2


# --- the engine with a real Redis, without mitmproxy --------------------------------------------


def engine_with(tmp: Path, name: str, url: str, **values: object) -> Engine:
    eng = Engine(registry=CollectorRegistry())
    settings = {
        "llmreel_store": str(tmp / name),
        "llmreel_shared": url,
        "llmreel_shared_timeout_ms": 2000,
    }
    eng.configure({**settings, **values}, DEFAULTS.keys())
    return eng


async def record_one(eng: Engine) -> FlowState:
    state = begin(eng)
    assert await eng.decide(state) is None
    eng.finish(state, ResponseInfo(200, JSON_HEADERS, json.dumps(CHAT_RESPONSE).encode()))
    async with asyncio.timeout(30):
        while not sample(eng, "llmreel_shared_writes_total"):
            await asyncio.sleep(0.01)
    return state


async def test_engine_reads_redis_after_a_local_miss_and_copies_the_recording(
    redis_server: Redis, tmp_path: Path
) -> None:
    a = engine_with(tmp_path, "a", redis_server.url)
    b = engine_with(tmp_path, "b", redis_server.url)
    try:
        state = await record_one(a)
        hit = await b.decide(begin(b))
        assert isinstance(hit, Recording) and hit.key == state.key and hit.request
        assert sample(b, "llmreel_shared_hits_total") == 1
        assert b.store is not None
        b.store.flush(10)
        assert b.store.get(state.namespace, state.key) is not None  # copied into b's LMDB
        assert await b.decide(begin(b)) is not None
        assert sample(b, "llmreel_shared_hits_total") == 1  # the second one was local
    finally:
        a.close()
        b.close()


async def test_engine_max_age_is_a_ttl_and_offline_mode_serves_stale_recordings(
    redis_server: Redis, tmp_path: Path
) -> None:
    a = engine_with(tmp_path, "a", redis_server.url, llmreel_max_age="1h")
    client = redis_server.client()
    try:
        state = await record_one(a)
        name = recording_key(state.namespace, state.key)
        assert 0 < client.pttl(name) <= 3600_000  # type: ignore[attr-defined]
        # An old recording (put there by hand, without a TTL) is a miss in auto mode...
        old = decode(client.get(name))  # type: ignore[attr-defined]
        old.recorded_at -= 7200
        client.set(name, encode(old, 1 << 20))  # type: ignore[attr-defined]
        auto = engine_with(tmp_path, "auto", redis_server.url, llmreel_max_age="1h")
        fresh = begin(auto)
        assert await auto.decide(fresh) is None
        fresh.release(False)
        # ...and served, stale, offline.
        offline = engine_with(
            tmp_path, "off", redis_server.url, llmreel_max_age="1h", llmreel_mode="offline"
        )
        assert isinstance(await offline.decide(begin(offline)), Recording)
        for eng in (auto, offline):
            eng.close()
    finally:
        a.close()


async def test_engine_with_redis_down_goes_on_and_backs_off(tmp_path: Path) -> None:
    eng = engine_with(tmp_path, "a", f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0")
    try:
        for _ in range(3):
            state = begin(eng)
            assert await eng.decide(state) is None  # forwarded: no error, no wait
            state.release(False)
        # A failure (the warm-up's or the first lookup's) opened the breaker: Redis is skipped.
        assert sample(eng, "llmreel_shared_errors_total", reason="connection") >= 1
        assert eng.shared is not None and eng.shared.client.breaker.backoff_s >= 0.5
    finally:
        eng.close()
