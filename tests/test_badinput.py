"""Bad and unusual input through a real proxy: odd bodies, encodings, framing, protocols.

Every case checks the same three things: the client gets a sensible answer (the upstream's own,
or a clear error), the proxy keeps serving afterwards, and only complete 2xx LLM exchanges are
recorded. `ScriptedUpstream` (plain HTTP on 127.0.0.1) plays upstreams the fake cannot: ones
that ignore `accept-encoding`, send malformed SSE, reset connections or speak WebSocket.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import wsproto
import wsproto.events as ws_events
from mitmproxy.net import encoding

from llmreel.storage.lmdbstore import LmdbStore
from tests.conftest import ProxyThread, http_client
from tests.fakeupstream import FakeUpstream, build_reply

MakeProxy = Callable[..., ProxyThread]
CHAT_PATH = "/v1/chat/completions"

# --------------------------------------------------------------------------------------------
# Shared helpers (also used by test_reliability and test_security)
# --------------------------------------------------------------------------------------------


def chat_body(prompt: str, *, stream: bool = False, model: str = "gpt-4o-mini") -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if stream:
        body["stream"] = True
    return body


def requests_total(proxy: ProxyThread, **labels: str) -> float:
    """Sum of `llmreel_requests_total` over the series matching `labels`."""
    total = 0.0
    for metric in proxy.registry.collect():
        if metric.name != "llmreel_requests":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


def stored_keys(proxy: ProxyThread) -> set[str]:
    """Keys the proxy has committed, read through its own open store (one process, one env)."""
    store = proxy.recorder.store
    assert store is not None
    store.flush(10)
    return {rec.key for rec in store.iter()}


def stopped_store_keys(proxy: ProxyThread) -> set[str]:
    """Stop the proxy (which commits and closes its store), then read the store from disk."""
    proxy.stop()
    with LmdbStore(proxy.settings.store, create=False) as store:
        return {rec.key for rec in store.iter()}


def assert_still_serving(proxy: ProxyThread, fake: FakeUpstream, bundle: str) -> None:
    """A fresh, ordinary LLM call through the proxy still works."""
    with http_client(proxy, bundle) as client:
        reply = client.post(
            f"{fake.url}{CHAT_PATH}", json=chat_body(f"still alive {time.monotonic_ns()}")
        )
    assert reply.status_code == 200, reply.text
    assert reply.headers["llmreel-cache"] == "miss"


@dataclass
class RawRequest:
    """A request as the scripted upstream read it: head bytes, parsed head, de-chunked body."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    head: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


Respond = Callable[[socket.socket, RawRequest], None]


def _read_until(sock: socket.socket, buffer: bytearray, marker: bytes) -> int:
    while (end := buffer.find(marker)) == -1:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("peer closed")
        buffer += data
    return end


def _read_exact(sock: socket.socket, buffer: bytearray, size: int) -> bytes:
    while len(buffer) < size:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("peer closed")
        buffer += data
    out = bytes(buffer[:size])
    del buffer[:size]
    return out


def read_request(sock: socket.socket) -> RawRequest:
    """Read one HTTP/1.1 request (content-length or chunked body) from a socket."""
    buffer = bytearray()
    end = _read_until(sock, buffer, b"\r\n\r\n")
    head = bytes(buffer[: end + 4])
    del buffer[: end + 4]
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    pairs = (line.partition(":") for line in lines[1:])
    headers = [(name.strip(), value.strip()) for name, colon, value in pairs if colon]
    request = RawRequest(method, target, headers, b"", head)
    if "chunked" in (request.header("transfer-encoding") or "").lower():
        parts = []
        while True:
            size_end = _read_until(sock, buffer, b"\r\n")
            size = int(bytes(buffer[:size_end]).split(b";")[0], 16)
            del buffer[: size_end + 2]
            if size == 0:
                _read_until(sock, buffer, b"\r\n")  # no trailers are sent by our clients
                break
            parts.append(_read_exact(sock, buffer, size + 2)[:-2])
        request.body = b"".join(parts)
    else:
        request.body = _read_exact(sock, buffer, int(request.header("content-length") or 0))
    return request


def response_head(status: int, headers: list[tuple[str, str]], framing: str) -> bytes:
    """An HTTP/1.1 response head; `framing` is its content-length or transfer-encoding line."""
    lines = [f"HTTP/1.1 {status} X", *(f"{k}: {v}" for k, v in headers), framing]
    return ("\r\n".join([*lines, "connection: close"]) + "\r\n\r\n").encode()


def chunk(piece: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(piece), piece)


def http_response(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    return response_head(status, headers, f"content-length: {len(body)}") + body


def chunked_response(status: int, headers: list[tuple[str, str]], pieces: list[bytes]) -> bytes:
    """A complete chunked HTTP/1.1 response, one chunk per piece."""
    body = b"".join(chunk(p) for p in pieces if p) + b"0\r\n\r\n"
    return response_head(status, headers, "transfer-encoding: chunked") + body


def fake_reply(request: RawRequest) -> Any:
    """What the fake upstream would answer (uncompressed): realistic provider bytes."""
    path, _, query = request.target.partition("?")
    if "://" in path:
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    return build_reply(request.method, path, query, lambda _name: None, request.body)


@dataclass
class ScriptedUpstream:
    """A plain-HTTP server on 127.0.0.1; each connection gets one request and `respond`."""

    respond: Respond
    requests: list[RawRequest] = field(default_factory=list)
    accepted: int = 0
    _sock: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> ScriptedUpstream:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        for thread in self._threads:
            thread.join(5)

    @property
    def url(self) -> str:
        assert self._sock is not None
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _accept_loop(self) -> None:
        while (listener := self._sock) is not None:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn, contextlib.suppress(OSError, ConnectionError):
            request = read_request(conn)
            self.requests.append(request)
            self.respond(conn, request)


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN: SO_LINGER with a zero timeout."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


# --------------------------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------------------------

# Bodies a JSON API rejects: the fake upstream answers each with a 400.
REJECTED_BODIES = {
    "not-json": b"hello, this is not JSON",
    "invalid-utf8": b"\xff\xfe\x80\x81 not utf-8 \xc3\x28",
    "truncated-json": b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "cut',
    "json-array": b"[1, 2, 3]",
}
# Bodies llmreel cannot parse as JSON (orjson stops at 64-bit integers) but an upstream may accept.
UNPARSED_BODIES = {
    "not-json": REJECTED_BODIES["not-json"],
    "invalid-utf8": REJECTED_BODIES["invalid-utf8"],
    "empty": b"",
    "huge-int": b'{"model": "gpt-4o-mini", "n": 123456789012345678901234567890}',
}


@pytest.mark.parametrize("body", REJECTED_BODIES.values(), ids=REJECTED_BODIES.keys())
def test_rejected_bodies_reach_the_upstream_unchanged_and_its_error_comes_back(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str, body: bytes
) -> None:
    proxy = make_proxy()
    url = f"{fake.url}{CHAT_PATH}"
    with httpx.Client(verify=fake.ssl_context()) as direct:
        expected = direct.post(url, content=body, headers={"content-type": "application/json"})
    with http_client(proxy, bundle) as client:
        reply = client.post(url, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == expected.status_code == 400
    assert reply.json() == expected.json()
    assert reply.headers["llmreel-cache"] == "miss"
    assert fake.requests[-1].body == body  # forwarded byte for byte
    assert_still_serving(proxy, fake, bundle)
    assert len(stored_keys(proxy)) == 1  # only the healthy call


def answer_anything(sock: socket.socket, request: RawRequest) -> None:
    """An upstream that answers any body (even non-JSON) with a complete chat completion."""
    reply = build_reply("POST", CHAT_PATH, "", lambda _n: None, json.dumps(chat_body("x")).encode())
    sock.sendall(http_response(200, reply.headers, reply.body))


@pytest.mark.parametrize("body", UNPARSED_BODIES.values(), ids=UNPARSED_BODIES.keys())
def test_unparsed_bodies_that_succeed_are_recorded_keyed_by_their_exact_bytes(
    make_proxy: MakeProxy, bundle: str, body: bytes
) -> None:
    proxy = make_proxy()
    with ScriptedUpstream(answer_anything) as upstream, http_client(proxy, bundle) as client:
        url = f"{upstream.url}{CHAT_PATH}"
        first = client.post(url, content=body)
        again = client.post(url, content=body)
        other = client.post(url, content=body + b"!")
    assert (first.status_code, again.status_code, other.status_code) == (200, 200, 200)
    assert [r.headers["llmreel-cache"] for r in (first, again, other)] == ["miss", "hit", "miss"]
    assert again.content == first.content
    assert [r.body for r in upstream.requests] == [body, body + b"!"]


def test_huge_request_and_response_bodies(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    proxy = make_proxy()
    # ~24 MB of prompt: a long document pasted into a message.
    prompt = "lorem ipsum dolor sit amet " * 900_000
    body = chat_body(prompt)
    url = f"{fake.url}{CHAT_PATH}"
    with http_client(proxy, bundle) as client:
        client.timeout = httpx.Timeout(120)
        first = client.post(url, json=body)
        assert first.status_code == 200, first.text[:500]
        again = client.post(url, json=body)
        big = client.post(
            url, json=chat_body("make it big"), headers={"x-fake-body-bytes": "20000000"}
        )
        big_again = client.post(url, json=chat_body("make it big"))
    assert (first.headers["llmreel-cache"], again.headers["llmreel-cache"]) == ("miss", "hit")
    assert again.content == first.content
    assert len(fake.requests[0].body) > 20_000_000
    assert big.status_code == 200 and len(big.content) > 20_000_000
    assert big_again.headers["llmreel-cache"] == "hit" and big_again.content == big.content
    assert len(fake.requests) == 2
    assert_still_serving(proxy, fake, bundle)


# --------------------------------------------------------------------------------------------
# Content encodings
# --------------------------------------------------------------------------------------------

ENCODINGS = ("gzip", "br", "zstd", "deflate")


def encode(data: bytes, name: str) -> bytes:
    encoded = encoding.encode(data, name)
    assert isinstance(encoded, bytes)
    return encoded


def decode(data: bytes, name: str) -> bytes:
    decoded = encoding.decode(data, name)
    assert isinstance(decoded, bytes)
    return decoded


def test_compressed_request_bodies_key_like_their_plain_form(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    proxy = make_proxy()
    raw = json.dumps(chat_body("compress this request")).encode()
    url = f"{fake.url}{CHAT_PATH}"
    with http_client(proxy, bundle) as client:
        # Compressed first: the upstream must get bytes it can decode.
        first = client.post(
            url,
            content=encode(raw, "gzip"),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        replies = [
            client.post(
                url,
                content=encode(raw, name),
                headers={"content-type": "application/json", "content-encoding": name},
            )
            for name in ENCODINGS
        ]
        plain = client.post(url, content=raw, headers={"content-type": "application/json"})
    assert first.status_code == 200, first.text
    assert first.headers["llmreel-cache"] == "miss"
    assert fake.requests[0].json == chat_body("compress this request")
    for reply in [*replies, plain]:
        assert reply.status_code == 200, reply.text
        assert reply.headers["llmreel-cache"] == "hit"
        assert reply.headers["llmreel-key"] == first.headers["llmreel-key"]
    assert len(fake.requests) == 1


def test_undecodable_request_body_is_forwarded_not_dropped(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    proxy = make_proxy()
    garbage = b"this claims to be gzip but is not"
    with http_client(proxy, bundle) as client:
        reply = client.post(
            f"{fake.url}{CHAT_PATH}",
            content=garbage,
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
    assert reply.status_code == 400  # the upstream's verdict, not the proxy's
    assert "cannot decode gzip" in reply.text
    assert_still_serving(proxy, fake, bundle)


def _compressed_upstream(name: str, stream: bool) -> Respond:
    """An upstream that compresses its reply with `name` whatever the client accepts."""

    def respond(sock: socket.socket, request: RawRequest) -> None:
        reply = fake_reply(request)
        headers = [*reply.headers, ("content-encoding", name)]
        if stream:
            sock.sendall(chunked_response(200, headers, [encode(b"".join(reply.events), name)]))
        else:
            sock.sendall(http_response(200, headers, encode(reply.body, name)))

    return respond


def post_raw(client: httpx.Client, url: str, **kw: Any) -> tuple[httpx.Response, bytes]:
    """POST and return the body as sent on the wire, before httpx undoes content-encoding."""
    with client.stream("POST", url, **kw) as response:
        return response, b"".join(response.iter_raw())


def decoded_body(response: httpx.Response, raw: bytes) -> bytes:
    name = response.headers.get("content-encoding", "identity")
    return raw if name == "identity" else decode(raw, name)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("name", ENCODINGS)
def test_compressed_responses_are_passed_through_and_recorded_decoded(
    make_proxy: MakeProxy, bundle: str, name: str, stream: bool
) -> None:
    proxy = make_proxy()
    body = chat_body(f"compressed {name} reply", stream=stream)
    with (
        ScriptedUpstream(_compressed_upstream(name, stream)) as upstream,
        http_client(proxy, bundle) as client,
    ):
        url = f"{upstream.url}{CHAT_PATH}"
        live, live_raw = post_raw(client, url, json=body)
        replay, replay_raw = post_raw(client, url, json=body)
    assert live.status_code == 200
    assert live.headers["content-encoding"] == name  # passed through as the upstream sent it
    live_body = decoded_body(live, live_raw)
    assert b'"choices"' in live_body
    assert replay.headers["llmreel-cache"] == "hit"
    assert decoded_body(replay, replay_raw) == live_body
    assert len(upstream.requests) == 1
    recording = proxy.recorder.store.get("default", replay.headers["llmreel-key"])
    assert recording is not None and recording.body == live_body  # stored decoded
    if stream:  # chunk sizes describe the stored (decoded) body, not the wire bytes
        assert sum(size for _, size in recording.chunks) == len(recording.body)


# --------------------------------------------------------------------------------------------
# Framing and protocols
# --------------------------------------------------------------------------------------------


def test_chunked_upload_is_forwarded_and_keyed_like_a_plain_one(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    proxy = make_proxy()
    raw = json.dumps(chat_body("sent in small chunks " * 50)).encode()

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(raw), 97):
            yield raw[start : start + 97]

    url = f"{fake.url}{CHAT_PATH}"
    with http_client(proxy, bundle) as client:
        chunked = client.post(url, content=pieces(), headers={"content-type": "application/json"})
        plain = client.post(url, content=raw, headers={"content-type": "application/json"})
    assert chunked.status_code == 200, chunked.text
    assert fake.requests[0].body == raw
    assert (chunked.headers["llmreel-cache"], plain.headers["llmreel-cache"]) == ("miss", "hit")


MALFORMED_STREAMS = {
    "garbage": [b"this is not an event stream\n", b"\x00\xff\xfe binary junk\n\n"],
    "bad-json-no-done": [b'data: {"id": "x", "choices": [{"delta": {"content": "hi"\n\n'],
    "no-data-prefix": [b'{"id": "x"}\n\n', b"[DONE]\n\n"],
    "invalid-utf8": [b'data: {"choices": [{"delta": {"content": "\xff\xfe"}}]}\n\n'],
    "huge-line": [b"data: " + b"a" * 3_000_000 + b"\n\n"],
}


@pytest.mark.parametrize("events", MALFORMED_STREAMS.values(), ids=MALFORMED_STREAMS.keys())
def test_malformed_sse_passes_through_byte_for_byte_and_is_not_recorded(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str, events: list[bytes]
) -> None:
    proxy = make_proxy()

    def respond(sock: socket.socket, _request: RawRequest) -> None:
        sock.sendall(chunked_response(200, [("content-type", "text/event-stream")], events))

    body = chat_body("malformed stream", stream=True)
    with ScriptedUpstream(respond) as upstream, http_client(proxy, bundle) as client:
        first = client.post(f"{upstream.url}{CHAT_PATH}", json=body)
        second = client.post(f"{upstream.url}{CHAT_PATH}", json=body)
    assert first.status_code == 200
    assert first.content == b"".join(events)
    assert second.headers["llmreel-cache"] == "miss", "an unfinished stream was recorded"
    assert len(upstream.requests) == 2
    assert_still_serving(proxy, fake, bundle)


class PreferH2Context(ssl.SSLContext):
    """Offers h2 before http/1.1, as browsers, curl and Go do.

    httpcore offers ["http/1.1", "h2"] and mitmproxy honours the client's order, so a stock
    httpx client with http2=True ends up on HTTP/1.1 through the proxy.
    """

    def set_alpn_protocols(self, protocols: Iterable[str]) -> None:
        super().set_alpn_protocols(sorted(protocols, key=lambda p: p != "h2"))


def http2_client(proxy_url: str, bundle: str) -> httpx.Client:
    context = PreferH2Context(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(bundle)
    return httpx.Client(proxy=proxy_url, verify=context, http2=True, timeout=30)


def test_http2_clients_record_replay_and_multiplex(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    proxy = make_proxy()
    url = f"{fake.url}{CHAT_PATH}"
    with http2_client(proxy.url, bundle) as client:
        first = client.post(url, json=chat_body("over h2"))
        assert first.http_version == "HTTP/2"
        again = client.post(url, json=chat_body("over h2"))
        with client.stream("POST", url, json=chat_body("h2 stream", stream=True)) as live:
            streamed = b"".join(live.iter_bytes())
        replayed = client.post(url, json=chat_body("h2 stream", stream=True))
        # Many streams on the one connection at once.
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            bodies = list(
                pool.map(lambda i: client.post(url, json=chat_body(f"h2 mux {i}")), range(10))
            )
        # A stream abandoned mid-way is an h2 RST_STREAM, not a closed connection.
        with client.stream(
            "POST",
            url,
            json=chat_body("h2 abandon", stream=True),
            headers={"x-fake-delay-ms": "100"},
        ) as abandoned:
            next(abandoned.iter_raw())
        after = client.post(url, json=chat_body("after the abandoned h2 stream"))
    assert (first.headers["llmreel-cache"], again.headers["llmreel-cache"]) == ("miss", "hit")
    assert replayed.headers["llmreel-cache"] == "hit" and replayed.content == streamed
    assert all(r.status_code == 200 and r.headers["llmreel-cache"] == "miss" for r in bodies)
    assert len({r.json()["choices"][0]["message"]["content"] for r in bodies}) == 10
    assert after.status_code == 200


def _websocket_echo(sock: socket.socket, request: RawRequest) -> None:
    server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    server.receive_data(request.head)
    while True:
        for event in server.events():
            if isinstance(event, ws_events.Request):
                sock.sendall(server.send(ws_events.AcceptConnection()))
            elif isinstance(event, ws_events.TextMessage):
                sock.sendall(server.send(ws_events.Message(data=event.data)))
            elif isinstance(event, ws_events.CloseConnection):
                sock.sendall(server.send(event.response()))
                return
        data = sock.recv(65536)
        if not data:
            return
        server.receive_data(data)


def websocket_roundtrip(proxy: ProxyThread, target: str, messages: list[str]) -> list[str]:
    """Open ws://target through the proxy (CONNECT, then the upgrade) and echo `messages`."""
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        buffer = bytearray()
        end = _read_until(sock, buffer, b"\r\n\r\n")
        assert buffer[:end].split(b" ")[1] == b"200", bytes(buffer)
        client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        sock.sendall(client.send(ws_events.Request(host=target, target="/v1/realtime")))
        received: list[str] = []
        pending = list(messages)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            client.receive_data(data)
            for event in client.events():
                if isinstance(event, ws_events.AcceptConnection | ws_events.TextMessage):
                    if isinstance(event, ws_events.TextMessage):
                        received.append(event.data)
                    if pending:
                        sock.sendall(client.send(ws_events.Message(data=pending.pop(0))))
                    elif len(received) == len(messages):
                        sock.sendall(client.send(ws_events.CloseConnection(code=1000)))
                elif isinstance(event, ws_events.CloseConnection):
                    return received
        return received


def test_websocket_passes_through_untouched_and_unrecorded(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    proxy = make_proxy()
    messages = ['{"type": "session.update"}', "plain text frame", "ü" * 5000]
    with ScriptedUpstream(_websocket_echo) as upstream:
        target = upstream.url.removeprefix("http://")
        assert websocket_roundtrip(proxy, target, messages) == messages
    assert requests_total(proxy) == 0
    assert stored_keys(proxy) == set()
    assert_still_serving(proxy, fake, bundle)


def test_non_llm_traffic_passes_through_untouched_and_unrecorded(
    make_proxy: MakeProxy, fake: FakeUpstream, bundle: str
) -> None:
    proxy = make_proxy()
    with httpx.Client(verify=fake.ssl_context()) as direct:
        expected = [direct.get(f"{fake.url}/v1/models"), direct.get(f"{fake.url}/healthz")]
    with http_client(proxy, bundle) as client:
        got = [client.get(f"{fake.url}/v1/models"), client.get(f"{fake.url}/healthz")]
        upload = client.post(
            f"{fake.url}/v1/files",
            content=b"\x00binary file\xff",
            headers={"accept-encoding": "gzip", "x-custom": "kept"},
        )
    for reply, want in zip(got, expected, strict=True):
        assert (reply.status_code, reply.content) == (want.status_code, want.content)
        assert "llmreel-cache" not in reply.headers
    forwarded = fake.requests[-1]
    assert forwarded.body == b"\x00binary file\xff"
    assert forwarded.header("accept-encoding") == "gzip"  # llmreel rewrites it only for LLM calls
    assert forwarded.header("x-custom") == "kept"
    assert "llmreel-cache" not in upload.headers
    assert requests_total(proxy) == 0
    assert stored_keys(proxy) == set()
