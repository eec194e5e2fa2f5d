"""`--workers N`: worker processes behind one port, one store, one /metrics.

The end-to-end tests of tests/test_e2e.py and tests/test_budget.py also run against
`--workers 2`; these check what only several processes have: the seam in mitmproxy, the
single flight across processes, restarts, the summed metrics, sequences, and a clean stop.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from mitmproxy.proxy import mode_servers
from prometheus_client.mmap_dict import MmapedDict

from llmreel.cli.workers import Supervisor, worker_count
from llmreel.storage.stores import open_store
from tests.conftest import ProxyThread, http_client, wait_until
from tests.fakeupstream import FakeUpstream
from tests.test_badinput import requests_total

MakeProxy = Callable[..., ProxyThread]


def test_the_seam_matches_the_pinned_mitmproxy() -> None:
    """worker.serve_inherited replaces AsyncioServerInstance.listen(self, host, port)."""
    listen = mode_servers.AsyncioServerInstance.listen
    assert list(inspect.signature(listen).parameters) == ["self", "host", "port"]
    assert "asyncio.start_server(self.handle_stream, host, port)" in inspect.getsource(listen)


def test_worker_count() -> None:
    assert worker_count("3") == 3
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError, match="positive number or auto"):
            worker_count(bad)


def _ask(proxy: ProxyThread, fake: FakeUpstream, bundle: str, prompt: str,
         **headers: str) -> httpx.Response:  # fmt: skip
    with http_client(proxy, bundle) as client:
        return client.post(
            f"{fake.url}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]},
            headers={"authorization": "Bearer sk-x", **headers},
        )


def _two_workers(make_proxy: MakeProxy) -> tuple[ProxyThread, Supervisor]:
    return _two_workers_with(make_proxy)


def _two_workers_with(make_proxy: MakeProxy, **settings: object) -> tuple[ProxyThread, Supervisor]:
    proxy = make_proxy(workers=2, **settings)
    assert isinstance(proxy.server, Supervisor)
    return proxy, proxy.server


def _requests_by_worker(supervisor: Supervisor) -> dict[str, float]:
    """llmreel_requests_total as each worker process counted it (its own metrics file)."""
    counts: dict[str, float] = {}
    for path in Path(supervisor.metrics_dir).glob("counter_*.db"):
        pid = path.stem.removeprefix("counter_")
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[1] == "llmreel_requests_total":
                counts[pid] = counts.get(pid, 0.0) + value
    return counts


def test_identical_misses_spread_over_workers_make_one_upstream_call(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    proxy, supervisor = _two_workers(make_proxy)

    def call(_: int) -> httpx.Response:  # each on its own connection
        return _ask(proxy, fake, bundle, "twenty of us", **{"x-fake-delay-ms": "300"})

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(call, range(20)))
    assert [r.status_code for r in replies] == [200] * 20
    assert len(fake.requests) == 1
    assert len({r.content for r in replies}) == 1  # every one got the leader's answer
    assert sorted(r.headers["llmreel-cache"] for r in replies) == ["hit"] * 19 + ["miss"]
    # Both processes served some of them (new connections go to whichever accepts first;
    # a few more distinct calls settle it if the 20 all went to one).
    for n in range(50):
        if len([c for c in _requests_by_worker(supervisor).values() if c]) == 2:
            break
        assert _ask(proxy, fake, bundle, f"spread {n}").status_code == 200
    assert len([c for c in _requests_by_worker(supervisor).values() if c]) == 2
    # One /metrics sums the workers.
    assert requests_total(proxy) == sum(_requests_by_worker(supervisor).values()) >= 20


def test_a_dead_worker_is_restarted_and_counted(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    proxy, supervisor = _two_workers(make_proxy)
    before = set(supervisor.pids)
    assert len(before) == 2
    victim = sorted(before)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(set(supervisor.pids) - before) == 1 and len(supervisor.pids) == 2,
               "a new worker")  # fmt: skip
    assert victim not in supervisor.pids
    assert supervisor.registry.get_sample_value("llmreel_worker_restarts_total") == 1
    assert supervisor.registry.get_sample_value("llmreel_workers") == 2
    for n in range(10):  # the port still serves, whichever worker takes the connection
        assert _ask(proxy, fake, bundle, f"after the restart {n}").status_code == 200


def test_sequences_are_counted_across_workers(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str, tmp_path: Path
) -> None:
    proxy = make_proxy(workers=2, sequence=True)
    answers = [_ask(proxy, fake, bundle, "again?").json() for _ in range(4)]
    assert len(fake.requests) == 4  # four occurrences, four recordings
    proxy.stop()
    store = open_store(str(tmp_path / "store"))
    try:
        assert sorted(r.seq for r in store.iter("default")) == [0, 1, 2, 3]
    finally:
        store.close()
    replay = make_proxy(workers=2, sequence=True, mode="offline")
    again = [_ask(replay, fake, bundle, "again?").json() for _ in range(4)]
    assert [a["id"] for a in again] == [a["id"] for a in answers]  # in order, from any worker


def _serve(tmp_path: Path, fake: FakeUpstream, confdir: Path, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmreel.cli.main", "serve", "--port", "0", "--metrics-port", "0",
         "--store", str(tmp_path / "store"), "--confdir", str(confdir),
         "--set", f"ssl_verify_upstream_trusted_ca={fake.cert_path}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc


def test_sigterm_stops_every_worker_with_nothing_lost(
    tmp_path: Path, fake: FakeUpstream, confdir: Path, bundle: str
) -> None:
    proc = _serve(tmp_path, fake, confdir, "--workers", "2")
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "llmreel ready" in line and "workers 2" in line, line
    url = line.split("regular ", 1)[1].split(" ", 1)[0]
    with httpx.Client(
        proxy=url, verify=ssl.create_default_context(cafile=bundle), timeout=30
    ) as client:
        for n in range(12):
            reply = client.post(
                f"{fake.url}/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{n}"}]},
                headers={"authorization": "Bearer sk-x"},
            )
            assert reply.status_code == 200
    children = _children(proc.pid)
    assert len(children) == 2
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid)
    store = open_store(str(tmp_path / "store"))
    try:
        assert len(list(store.iter("default"))) == 12  # every recording was saved
    finally:
        store.close()
    listed = subprocess.run(
        [sys.executable, "-m", "llmreel.cli.main", "log", "ls", "--store", str(tmp_path / "store"),
         "--json"], capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert listed.stdout.count('"id"') >= 12  # and every exchange was logged


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    kids: list[int] = []
    for task in tasks.iterdir():
        text = (task / "children").read_text().split()
        kids += [int(k) for k in text]
    return kids


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return "zombie"


def test_run_with_workers_reports_the_whole_run(
    tmp_path: Path, fake: FakeUpstream, confdir: Path, bundle: str
) -> None:
    script = tmp_path / "agent.py"
    script.write_text(
        "import os, httpx\n"
        "proxy = os.environ['HTTPS_PROXY']\n"
        "for n in [1, 2, 3, 1, 2, 3]:\n"
        "    with httpx.Client(proxy=proxy, verify=os.environ['SSL_CERT_FILE']) as c:\n"
        f"        r = c.post('{fake.url}/v1/chat/completions', headers={{'authorization': 'Bearer sk-x'}},\n"
        "                   json={'model': 'gpt-4o-mini', 'messages': [{'role': 'user', 'content': f'n{n}'}]})\n"
        "        assert r.status_code == 200, r.text\n"
    )
    common = ["--store", str(tmp_path / "store"), "--confdir", str(confdir), "--workers", "2",
              "--set", f"ssl_verify_upstream_trusted_ca={fake.cert_path}"]  # fmt: skip
    first = subprocess.run(
        [sys.executable, "-m", "llmreel.cli.main", "run", *common, "--", sys.executable, str(script)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "3 hit(s), 3 recorded" in first.stderr
    offline = subprocess.run(
        [sys.executable, "-m", "llmreel.cli.main", "run", "--mode", "offline", *common, "--",
         sys.executable, str(script)], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert offline.returncode == 0, offline.stderr
    assert "6 hit(s), 0 recorded" in offline.stderr
    assert len(fake.requests) == 3


def test_a_store_open_in_another_proxy_still_works(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str, tmp_path: Path, confdir: Path
) -> None:
    single = make_proxy()  # in this process, on tmp_path/store
    proc = _serve(tmp_path, fake, confdir, "--workers", "2")  # another process, the same store
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "llmreel ready" in line, line
        url = line.split("regular ", 1)[1].split(" ", 1)[0]
        tls = ssl.create_default_context(cafile=bundle)
        with httpx.Client(proxy=url, verify=tls, timeout=30) as client:

            def via_workers(prompt: str) -> str:
                reply = client.post(
                    f"{fake.url}/v1/chat/completions",
                    json={
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": prompt}],
                    },
                    headers={"authorization": "Bearer sk-x"},
                )
                return reply.headers["llmreel-cache"]

            assert _ask(single, fake, bundle, "shared store").headers["llmreel-cache"] == "miss"
            assert via_workers("shared store") == "hit"
            assert via_workers("the other way") == "miss"
            assert _ask(single, fake, bundle, "the other way").headers["llmreel-cache"] == "hit"
        assert len(fake.requests) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_no_secret_reaches_the_supervisors_files(make_proxy: MakeProxy) -> None:
    """Worker settings (with --proxy-auth) go to workers on a pipe, never into a file."""
    proxy, supervisor = _two_workers_with(make_proxy, proxy_auth="reel:secret-horse-4711")
    assert supervisor.private_dir is not None
    files = [p for p in supervisor.private_dir.rglob("*") if p.is_file()]
    assert files  # the metrics files at least
    assert not [p for p in files if b"secret-horse-4711" in p.read_bytes()]
    assert proxy.url
