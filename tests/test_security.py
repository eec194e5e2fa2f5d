"""llmreel lets no one in and leaks nothing: binds, proxy auth, secrets, file modes, offline.

Most checks share one `llmreel serve` run (`secret_run`): a real process with a permissive umask
and verbose logs, fed API keys in every usual place, whose store, logs and metrics are then read
byte by byte. No server here ever listens beyond 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmreel.cli.reverse import Reverse
from llmreel.log.packing import pack_exchange
from llmreel.storage.lmdbstore import LmdbStore
from tests.conftest import ProxyThread, http_client
from tests.fakeupstream import FakeUpstream
from tests.leaks import leaks
from tests.test_badinput import (
    CHAT_PATH,
    ScriptedUpstream,
    answer_anything,
    chat_body,
    http2_client,
    requests_total,
)
from tests.test_cli import LLMREEL, free_port, serve_args
from tests.test_cli_cache import recording
from tests.test_exchangelog import make_exchange
from tests.test_reliability import proxy_url

MakeProxy = Callable[..., ProxyThread]

#: One distinct fake credential per place a client may put one.
SECRETS = {
    "bearer": "sk-proj-SECRETbearer0a1b2c3d4e5f6g7h8i9j",
    "x-api-key": "sk-ant-api03-SECRETxapikey0a1b2c3d4e5f6",
    "api-key": "azureSECRETapikey0a1b2c3d4e5f6a7b8c9d0",  # Azure keys have no telltale shape
    "x-goog-api-key": "AIzaSySECRETgoogheader0a1b2c3d4e5f6g7h8",
    "query-key": "AIzaSySECRETquery0a1b2c3d4e5f6g7h8i9j0k",
    # Credentials under other query names (Azure API Management, OAuth, ...): no key shape.
    "query-api_token": "SECRETapitoken0a1b2c3d4e5f6g7h8i9j0k",
    "query-subscription-key": "SECRETsubscription0a1b2c3d4e5f6g7h8",
    "query-client_secret": "SECRETclientsecret0a1b2c3d4e5f6g7h8",
    "query-access-token": "SECRETaccesstoken0a1b2c3d4e5f6g7h8i",
    "cookie": "SECRETcookie0a1b2c3d4e5f6g7h8i9j0",
}
#: Words that appear only in prompts: /metrics must never show them.
PROMPT_WORDS = ("zanzibarquokka", "periwinklemongoose")
# A non-loopback address that is not this machine's, so the bind attempt fails: the warning is
# what is under test, and no listener ever opens beyond loopback.
FOREIGN_HOST = "198.51.100.7"


def credential_headers() -> dict[str, str]:
    return {
        "authorization": f"Bearer {SECRETS['bearer']}",
        "x-api-key": SECRETS["x-api-key"],
        "api-key": SECRETS["api-key"],
        "x-goog-api-key": SECRETS["x-goog-api-key"],
        "cookie": f"session={SECRETS['cookie']}; theme=dark",
    }


@dataclass
class SecretRun:
    """What one `llmreel serve` run, fed credentials everywhere, left behind."""

    ready_line: str
    listening: list[str]
    store: Path
    confdir: Path
    stdout: str = ""
    stderr: str = ""
    metrics: str = ""
    upstream_cookies: list[str] = field(default_factory=list)
    returncode: int | None = None


def listening_addresses(pid: int) -> list[str]:
    """Local addresses of the process's listening TCP sockets, from /proc (no tools needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                found.append(_proc_address(cols[1]))
    return found


def _proc_address(hex_address: str) -> str:
    address, port = hex_address.split(":")
    if len(address) == 8:
        return ".".join(str(b) for b in reversed(bytes.fromhex(address))) + f":{int(port, 16)}"
    return f"[{address}]:{int(port, 16)}"  # IPv6: enough to tell it is not 127.0.0.1


def drive_secret_traffic(url: str, bundle: str, upstream: FakeUpstream, run: SecretRun) -> None:
    """Calls of every kind with credentials everywhere, successes and failures alike."""
    query = "?" + "&".join(
        f"{name.removeprefix('query-')}={secret}"
        for name, secret in SECRETS.items()
        if name.startswith("query-")
    )
    prompt = f"{PROMPT_WORDS[0]} {PROMPT_WORDS[1]}"
    anthropic = {"model": "claude-sonnet-4-6", "max_tokens": 50,
                 "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
    gemini = {"contents": [{"parts": [{"text": prompt}]}]}
    # (path, body, extra headers): successes first, then failures, which log the request.
    calls: list[tuple[str, Any, dict[str, str]]] = [
        (f"{CHAT_PATH}{query}", chat_body(prompt), {}),
        (f"{CHAT_PATH}{query}", chat_body(prompt), {}),  # a hit
        (CHAT_PATH, chat_body(prompt, stream=True), {}),
        ("/v1/messages", anthropic, {}),
        (f"/v1beta/models/gemini-2.5-flash:generateContent{query}", gemini, {}),
        (f"{CHAT_PATH}{query}", chat_body(f"{prompt} 401"), {"x-fake-status": "401"}),
        (f"{CHAT_PATH}{query}", chat_body(f"{prompt} only"), {"llmreel-cache": "only"}),
        (f"{CHAT_PATH}{query}", chat_body(f"{prompt} cut", stream=True), {"x-fake-cut-after": "2"}),
    ]
    replies = []
    context = ssl.create_default_context(cafile=bundle)
    with httpx.Client(proxy=url, verify=context, timeout=30) as client:
        for path, body, extra in calls:
            try:
                replies.append(client.post(upstream.url + path, json=body,
                                           headers={**credential_headers(), **extra}))  # fmt: skip
            except httpx.HTTPError:
                pass  # the cut stream
        replies.append(client.get(f"{upstream.url}/v1/models{query}", headers=credential_headers()))
    # HTTP/2 too: its headers take another path (HPACK) into the proxy.
    with http2_client(url, bundle) as h2:
        replies.append(h2.post(f"{upstream.url}{CHAT_PATH}{query}", json=chat_body(f"{prompt} h2"),
                               headers=credential_headers()))  # fmt: skip
    assert replies[-1].http_version == "HTTP/2"
    assert [r.status_code for r in replies[:5]] == [200] * 5, [r.text[:200] for r in replies]
    assert replies[1].headers["llmreel-cache"] == "hit"
    run.upstream_cookies = [
        v.split(";")[0].split("=", 1)[1] for r in replies for v in r.headers.get_list("set-cookie")
    ]
    assert run.upstream_cookies, "the fake upstream sets cookies; this test needs some"


def wait_for_ready_line(stdout: Path, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        first = stdout.read_text().partition("\n")
        if first[1]:
            return first[0]
        time.sleep(0.05)
    raise AssertionError(f"llmreel serve did not get ready: {stdout.read_text()!r}")


@pytest.fixture(scope="module")
def secret_run(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> Iterator[SecretRun]:
    root = tmp_path_factory.mktemp("secret-run")
    fresh_confdir = root / "confdir"  # created by the proxy itself, under the umask below
    metrics_port = free_port()
    args = serve_args(root, fresh_confdir, upstream, "-v", "--metrics-port", str(metrics_port))
    # Files, not pipes: verbose logs would fill a pipe nobody reads yet and stall the proxy.
    stdout, stderr = root / "stdout.log", root / "stderr.log"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [LLMREEL, "serve", *args], cwd=root, stdout=out, stderr=err,
            preexec_fn=lambda: os.umask(0),  # the product must not rely on a kind umask
        )  # fmt: skip
    try:
        ready = wait_for_ready_line(stdout, proc)
        run = SecretRun(ready, listening_addresses(proc.pid), root / "store", fresh_confdir)
        bundle = root / "bundle.pem"
        bundle.write_bytes((fresh_confdir / "mitmproxy-ca-cert.pem").read_bytes())
        drive_secret_traffic(proxy_url(ready), str(bundle), upstream, run)
        run.metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    run.stdout, run.stderr, run.returncode = stdout.read_text(), stderr.read_text(), proc.returncode
    yield run


def test_default_bind_is_loopback(secret_run: SecretRun) -> None:
    assert re.search(r"regular http://127\.0\.0\.1:\d+ ", secret_run.ready_line)
    assert re.search(r"metrics http://127\.0\.0\.1:\d+/metrics", secret_run.ready_line)
    assert len(secret_run.listening) >= 2  # the proxy and /metrics
    assert all(a.startswith("127.0.0.1:") for a in secret_run.listening), secret_run.listening


def serve_foreign(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            LLMREEL,
            "serve",
            "--host",
            FOREIGN_HOST,
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--store",
            "/nonexistent/never-created",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def foreign_host_is_not_ours() -> None:
    if Path("/proc/sys/net/ipv4/ip_nonlocal_bind").read_text().strip() != "0":
        pytest.skip(
            "this machine may bind foreign addresses; the test would open a remote listener"
        )


@pytest.mark.usefixtures("foreign_host_is_not_ours")
def test_non_loopback_bind_needs_auth_or_allow_remote_and_always_warns() -> None:
    refused = serve_foreign()
    assert refused.returncode == 2
    assert "--proxy-auth" in refused.stderr and "--allow-remote" in refused.stderr
    allowed = serve_foreign("--allow-remote", "--metrics-host", FOREIGN_HOST)
    authenticated = serve_foreign("--proxy-auth", "reel:pass")
    for result in (allowed, authenticated):
        assert f"--host {FOREIGN_HOST} listens beyond this machine" in result.stderr, result.stderr
        assert "llmreel ready" not in result.stdout  # the address is not ours: nothing listened
    assert f"--metrics-host {FOREIGN_HOST} listens beyond this machine" in allowed.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_proxy_auth_rejects_strangers_and_admits_the_user(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str, workers: int
) -> None:
    proxy = make_proxy(proxy_auth="reel:correct-horse", workers=workers)
    host_port = proxy.url.removeprefix("http://")
    url = f"{fake.url}{CHAT_PATH}"
    context = ssl.create_default_context(cafile=bundle)
    for credentials in ("", "reel:wrong-horse@", "intruder:correct-horse@"):
        with httpx.Client(proxy=f"http://{credentials}{host_port}", verify=context) as stranger:
            with pytest.raises(httpx.ProxyError, match="407"):
                stranger.post(url, json=chat_body("let me in"))  # CONNECT refused
            plain = stranger.post(
                f"http://127.0.0.1:{fake.port}{CHAT_PATH}", json=chat_body("plain")
            )
            assert plain.status_code == 407  # plain-HTTP proxying refused too
    with httpx.Client(proxy=f"http://reel:correct-horse@{host_port}", verify=context) as user:
        reply = user.post(url, json=chat_body("it is me"))
    assert reply.status_code == 200
    assert [r.header("proxy-authorization") for r in fake.requests] == [None]
    assert requests_total(proxy) == 1


def test_credentials_are_never_persisted_or_logged(secret_run: SecretRun) -> None:
    assert secret_run.returncode == 0, secret_run.stderr[-2000:]
    assert {"data.mdb", "lock.mdb"} <= {p.name for p in secret_run.store.iterdir()}
    assert "llmreel ready" in secret_run.stdout
    secrets = {
        **SECRETS,
        **{f"upstream-cookie-{i}": c for i, c in enumerate(secret_run.upstream_cookies)},
    }
    # Every file byte by byte, and every stored value decompressed.
    found = leaks(secret_run.store, secrets)
    found += [
        (name, stream)
        for stream, content in (("stdout", secret_run.stdout), ("stderr", secret_run.stderr))
        for name, secret in secrets.items()
        if secret in content
    ]
    assert found == []
    # Where a URL carried a key, the log shows its masked fingerprint, so a person can debug.
    assert "redacted" in secret_run.stderr


def test_the_leak_hunt_sees_inside_compressed_values(tmp_path: Path) -> None:
    """The hunt above can fail: a key in a compressed recording or log record is found."""
    planted = "SECRETplanted0a1b2c3d4e5f6g7h8i9j0k"
    body = f"{'padding ' * 200} {planted}".encode()
    ex = make_exchange("openai-chat", request_body=body)
    with LmdbStore(tmp_path) as store:
        store.put(recording(f"{'padding ' * 200} {planted}"))
        store.write_raw([(b"log", ex.id.encode(), pack_exchange(ex))])
    assert planted.encode() not in (tmp_path / "data.mdb").read_bytes()  # both are compressed
    places = sorted(where.split(" database")[0] for _, where in leaks(tmp_path, {"p": planted}))
    assert places == ["entries", "log"]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_and_ca_key_files_are_private_even_with_a_permissive_umask(
    secret_run: SecretRun,
) -> None:
    store_paths = [secret_run.store, *secret_run.store.rglob("*")]
    wrong = {
        str(p): oct(mode_of(p))
        for p in store_paths
        if mode_of(p) != (0o700 if p.is_dir() else 0o600)
    }
    assert wrong == {}, "store files must be 0600 and directories 0700"
    keys = [secret_run.confdir / "mitmproxy-ca.pem", secret_run.confdir / "mitmproxy-ca.p12"]
    assert {str(p): oct(mode_of(p)) for p in keys} == {str(p): "0o600" for p in keys}
    assert oct(mode_of(secret_run.confdir)) == "0o700", "the directory holding the CA key"


def test_metrics_expose_no_secrets_and_no_prompts(secret_run: SecretRun) -> None:
    assert "llmreel_requests_total" in secret_run.metrics
    forbidden = [
        *SECRETS.values(),
        *PROMPT_WORDS,
        *secret_run.upstream_cookies,
        "redacted",
        "SECRET",
    ]
    assert [word for word in forbidden if word.lower() in secret_run.metrics.lower()] == []


def test_offline_mode_opens_no_connection_to_the_upstream(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    proxy = make_proxy(mode="offline")
    before = fake.connections
    with http_client(proxy, bundle) as client:
        llm = [
            client.post(f"{fake.url}{CHAT_PATH}", json=chat_body("never recorded")),
            client.post(
                f"{fake.url}{CHAT_PATH}",
                json=chat_body("bypass", stream=True),
                headers={"llmreel-cache": "bypass"},
            ),
            client.post(
                f"{fake.url}{CHAT_PATH}",
                json=chat_body("refresh"),
                headers={"llmreel-cache": "refresh"},
            ),
        ]
        other = client.get(f"{fake.url}/v1/models")
    assert [r.status_code for r in llm] == [412] * 3
    assert all(r.headers["llmreel-cache"] == "offline_miss" for r in llm)
    assert other.status_code == 502  # not an LLM call, and still not let out
    assert fake.connections == before


def test_offline_mode_makes_no_connection_attempt_at_all(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    # A listener that counts every connection: anything reaching it is a leak.
    with ScriptedUpstream(answer_anything) as trap:
        port = int(trap.url.rsplit(":", 1)[1])
        proxy = make_proxy(mode="offline", reverse=[Reverse(f"https://127.0.0.1:{port}", 0)])
        with http_client(proxy, bundle) as client:
            replies = [
                client.post(f"https://127.0.0.1:{port}{CHAT_PATH}", json=chat_body("tls")),
                client.post(f"http://127.0.0.1:{port}{CHAT_PATH}", json=chat_body("plain")),
                client.get(f"http://127.0.0.1:{port}/anything-else"),
            ]
            try:
                client.get(f"https://127.0.0.1:{port}/anything-else")
            except httpx.HTTPError:
                pass  # refused one way or another; what matters is the trap's count
        with httpx.Client() as direct:
            replies.append(
                direct.post(f"{proxy.reverse_url()}{CHAT_PATH}", json=chat_body("reverse"))
            )
        assert [r.status_code for r in replies] == [412, 412, 502, 412]
        assert trap.accepted == 0
        assert trap.requests == []
