"""A response larger than --max-record-bytes streams through whole, unrecorded, in bounded memory.

The proxy runs as a real `llmreel serve` process so that its own peak RSS can be read; the
upstream is a raw socket server streaming 300 MB of SSE, so that nothing but the proxy holds
the bytes.
"""

from __future__ import annotations

import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_cli import free_port, start_serve

TOTAL = 300 * 1024 * 1024
_PREFIX = b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"'
_SUFFIX = b'"},"finish_reason":null}]}\n\n'
EVENT = _PREFIX + b"x" * (64 * 1024 - len(_PREFIX) - len(_SUFFIX)) + _SUFFIX  # 64 KiB per event
RSS_LIMIT_KB = 300 * 1024


class _Streamer(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn: socket.socket = self.request
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
        while len(rest) < length:
            rest += conn.recv(65536)
        big = b'"big"' in rest
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")  # fmt: skip
        events = TOTAL // len(EVENT) if big else 1
        frame = b"%x\r\n" % len(EVENT) + EVENT + b"\r\n"
        for _ in range(events):
            conn.sendall(frame)
        done = b"data: [DONE]\n\n"
        conn.sendall(b"%x\r\n" % len(done) + done + b"\r\n0\r\n\r\n")


@pytest.fixture
def streamer() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Streamer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _stderr(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    return proc.communicate(timeout=30)[1]


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def test_a_300_mb_stream_reaches_the_client_whole_in_bounded_memory(
    tmp_path: Path, confdir: Path, streamer: str
) -> None:
    metrics_port = free_port()
    proc, line = start_serve(
        "--port", "0", "--metrics-port", str(metrics_port), "--store", str(tmp_path / "store"),
        "--confdir", str(confdir), "--reverse", f"{streamer}@0", "-q",
        cwd=tmp_path,
    )  # fmt: skip
    try:
        base = line.split("reverse ", 1)[1].split(" ", 1)[0]
        body = {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "big"}],
        }
        received = 0
        with httpx.Client(timeout=120) as client:
            with client.stream("POST", f"{base}/v1/chat/completions", json=body) as reply:
                assert reply.status_code == 200
                for chunk in reply.iter_raw():
                    received += len(chunk)
                    tail = chunk
            assert received == TOTAL // len(EVENT) * len(EVENT) + len(b"data: [DONE]\n\n")
            assert tail.endswith(b"data: [DONE]\n\n")
            assert _peak_rss_kb(proc.pid) < RSS_LIMIT_KB
            # It keeps serving, and a small stream is still recorded and replayed.
            small = {**body, "messages": [{"role": "user", "content": "small"}]}
            first = client.post(f"{base}/v1/chat/completions", json=small)
            again = client.post(f"{base}/v1/chat/completions", json=small)
            assert first.headers["llmreel-cache"] == "miss"
            assert again.headers["llmreel-cache"] == "hit", _stderr(proc)
            metrics = client.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            assert 'llmreel_recordings_skipped_total{reason="too_large"} 1.0' in metrics
    finally:
        proc.terminate()
        proc.wait(30)
