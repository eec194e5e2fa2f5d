"""Runs: a draft sent through an llmreel proxy with the cache bypassed, and found again in the log.

Each run carries `llmreel-cache: bypass` (or `refresh`, to record its answer),
`llmreel-namespace` and a session of its own (`llmreel-session: lab-<id>-<n>`), by which its
exchange is found in the log once the proxy has written it. What a run reports (the answer,
status, tokens, cost) comes from that log record: masked like every other exchange, and priced
by the proxy (`llmreel.metering.pricing`). A key typed by the user is sent in a header and
nowhere else; every string a run returns is checked for it as well.

    lab = Lab(exchange_log, proxy=ProxyProcess(store, confdir="~/.mitmproxy"))
    results = await lab.run(draft, n=2, namespace="playground", original_host="api.openai.com")
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import orjson

from llmreel.core.ids import new_id
from llmreel.core.stability import Answer
from llmreel.core.wire import CACHE_HEADER, CONTROL_HEADER, NAMESPACE_HEADER, SESSION_HEADER
from llmreel.lab.draft import CannotAsk, Draft, credential
from llmreel.lab.proxyproc import ProxyProcess
from llmreel.log.exchangelog import ExchangeLog
from llmreel.log.query import LogFilter
from llmreel.providers import DEFAULT_HOSTS, HostMap, conversation, summarize

__all__ = ["Lab", "OnText", "RunResult"]

#: How long a finished run's exchange may take to appear in the log.
LOG_WAIT_S: Final = 15.0
_TEXT_EVERY_S: Final = 0.1
#: Called with (run index, the answer's text so far) while an answer streams in.
OnText = Callable[[int, str], Awaitable[None]]


@dataclass(slots=True)
class RunResult:
    """One run, as logged."""

    index: int
    id: str | None = None
    status: int | None = None
    cache: str | None = None
    text: str = ""
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    duration_s: float | None = None
    perturbations: list[str] = field(default_factory=list)
    temperature: Any = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300

    def answer(self) -> Answer:
        return Answer(self.text, tuple((c["name"], c["arguments"]) for c in self.tool_calls))

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "id": self.id, "status": self.status, "cache": self.cache,
            "text": self.text, "tool_calls": self.tool_calls, "error": self.error,
            "cost_usd": self.cost_usd, "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens, "duration_s": self.duration_s,
            "perturbations": self.perturbations, "temperature": self.temperature,
        }  # fmt: skip


class Lab:
    """Sends drafts through one llmreel proxy and reads their exchanges from `log`.

    `proxy` is a running proxy's URL or a `ProxyProcess` started on first use. `offline` refuses
    every run at once (CannotAsk), as does a proxy that answers in offline mode.
    """

    def __init__(
        self,
        log: ExchangeLog,
        *,
        proxy: str | ProxyProcess,
        confdir: str = "~/.mitmproxy",
        offline: bool = False,
        hosts: HostMap = DEFAULT_HOSTS,
        environ: Mapping[str, str] | None = None,
        timeout_s: float = 120.0,
        concurrency: int = 4,
    ) -> None:
        self.log = log
        self.proxy = proxy
        self.confdir = confdir
        self.offline = offline
        self.hosts = hosts
        self.environ = os.environ if environ is None else environ
        self.timeout_s = timeout_s
        self._limit = asyncio.Semaphore(concurrency)
        self._client: httpx.AsyncClient | None = None

    # --- the proxy ------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise CannotAsk when no run can go upstream (offline)."""
        if self.offline:
            raise CannotAsk(
                "offline: this llmreel runs with --offline (or --mode offline), so the "
                "playground and probes cannot call upstream. Start it without --offline to send.",
                "offline",
            )

    async def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            if isinstance(self.proxy, ProxyProcess):
                try:
                    url = await asyncio.to_thread(self.proxy.start)
                except RuntimeError as exc:
                    raise CannotAsk(str(exc), "no_proxy") from exc
            else:
                url = self.proxy
            self._client = httpx.AsyncClient(
                proxy=url, verify=self._trust(), trust_env=False,
                timeout=httpx.Timeout(self.timeout_s, connect=10.0),
            )  # fmt: skip
        return self._client

    def _trust(self) -> ssl.SSLContext:
        """HTTPS goes through the proxy's interception: trust its CA (and nothing else)."""
        ca = Path(os.path.expanduser(self.confdir)) / "mitmproxy-ca-cert.pem"
        return (
            ssl.create_default_context(cafile=str(ca))
            if ca.is_file()
            else ssl.create_default_context()
        )

    @property
    def proxy_url(self) -> str:
        """The proxy's URL to show: without the user and password of its proxy auth."""
        url = self.proxy.url if isinstance(self.proxy, ProxyProcess) else self.proxy
        scheme, sep, rest = url.partition("://")
        return scheme + sep + rest.rpartition("@")[2] if sep else url

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if isinstance(self.proxy, ProxyProcess):
            await asyncio.to_thread(self.proxy.stop)

    # --- runs -----------------------------------------------------------------------------------

    def headers_for(self, draft: Draft, *, original_host: str, typed_key: str) -> dict[str, str]:
        """The headers a run sends: the draft's, JSON, and the key. Raises CannotAsk."""
        self.check()
        headers = {**draft.headers, "content-type": "application/json"}
        found = credential(draft, original_host=original_host, typed_key=typed_key,
                           environ=self.environ, hosts=self.hosts)  # fmt: skip
        if found is not None:
            headers[found[0]] = found[1]
        return headers

    async def run(
        self,
        drafts: list[Draft],
        *,
        namespace: str,
        original_host: str,
        typed_key: str = "",
        record: bool = False,
        on_text: OnText | None = None,
        on_done: Callable[[RunResult], Awaitable[None]] | None = None,
    ) -> list[RunResult]:
        """Send each draft once (concurrently, a few at a time); results in the drafts' order."""
        headers = [self.headers_for(d, original_host=original_host, typed_key=typed_key)
                   for d in drafts]  # fmt: skip
        batch = new_id()
        if on_text is not None and typed_key:
            shown = on_text

            async def masked(index: int, text: str) -> None:
                await shown(index, text.replace(typed_key, "***"))

            on_text = masked

        async def one(index: int) -> RunResult:
            async with self._limit:
                result = await self._run_one(drafts[index], headers[index], index, batch,
                                             namespace, record, on_text)  # fmt: skip
            result = _hidden(result, typed_key)
            if on_done is not None:
                await on_done(result)
            return result

        return list(await asyncio.gather(*(one(i) for i in range(len(drafts)))))

    async def _run_one(
        self, draft: Draft, headers: dict[str, str], index: int, batch: str, namespace: str,
        record: bool, on_text: OnText | None,
    ) -> RunResult:  # fmt: skip
        session = f"lab-{batch}-{index}"
        controls = {CONTROL_HEADER: "refresh" if record else "bypass",
                    NAMESPACE_HEADER: namespace, SESSION_HEADER: session}  # fmt: skip
        started = time.time()
        client = await self._http()
        ep = draft.endpoint(self.hosts)
        body = orjson.dumps(draft.body)
        try:
            async with client.stream(draft.method, draft.url, content=body,
                                     headers={**headers, **controls}) as reply:  # fmt: skip
                if reply.headers.get(CACHE_HEADER) == "offline_miss":
                    raise CannotAsk(
                        f"the proxy at {self.proxy_url} runs in offline mode: it cannot call "
                        "upstream. Give a proxy in auto mode (--proxy) or none.",
                        "offline",
                    )
                content_type = reply.headers.get("content-type", "")
                received = bytearray()
                shown, last = "", 0.0
                async for chunk in reply.aiter_bytes():
                    received += chunk
                    now = time.monotonic()
                    if on_text is not None and ep is not None and now - last >= _TEXT_EVERY_S:
                        last = now
                        text = summarize(ep, bytes(received), content_type).text
                        if text != shown:
                            shown = text
                            await on_text(index, text)
        except httpx.ProxyError as exc:
            raise CannotAsk(
                f"the proxy at {self.proxy_url} refused the run: {exc}", "no_proxy"
            ) from exc
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if isinstance(exc, httpx.ConnectError):
                raise CannotAsk(
                    f"cannot reach the llmreel proxy at {self.proxy_url}: {exc}", "no_proxy"
                ) from exc
            return RunResult(index, error=f"the answer was cut: {exc}")
        except httpx.TimeoutException:
            return RunResult(index, error=f"no answer within {self.timeout_s:g} s")
        return await self._logged(index, session, started)

    async def _logged(self, index: int, session: str, started: float) -> RunResult:
        """The run's exchange, read from the log once the proxy has written it."""
        flt = LogFilter(sessions=(session,), since=started - 60)
        deadline = time.monotonic() + LOG_WAIT_S
        while True:
            found = await asyncio.to_thread(self._find, flt)
            if found is not None:
                return _result(index, found)
            if time.monotonic() > deadline:
                return RunResult(index, error=(
                    f"the run went through {self.proxy_url} but never reached the exchange log "
                    f"at {self.log.store.path}: does that proxy write to this store?"))  # fmt: skip
            await asyncio.sleep(0.05)

    def _find(self, flt: LogFilter) -> dict[str, Any] | None:
        for head in self.log.iter(flt, newest_first=False):
            return self.log.get(str(head["id"]))
        return None


def _result(index: int, record: Mapping[str, Any]) -> RunResult:
    conv = conversation(record)
    parts = conv.response.parts if conv.response is not None else ()
    return RunResult(
        index, id=str(record["id"]), status=record.get("status"), cache=record.get("cache"),
        text="\n".join(p.text for p in parts if p.kind == "text"),
        tool_calls=[{"name": p.name or "", "arguments": p.text} for p in parts if p.kind == "tool_call"],
        error=record.get("error"), cost_usd=record.get("cost_usd"),
        input_tokens=record.get("input_tokens"), output_tokens=record.get("output_tokens"),
        duration_s=record.get("duration_s"),
    )  # fmt: skip


def _hidden(result: RunResult, key: str) -> RunResult:
    """`result` with a typed key masked wherever an upstream may have echoed it."""
    if not key:
        return result
    masked = "***"
    result.text = result.text.replace(key, masked)
    result.error = result.error.replace(key, masked) if result.error else result.error
    for call in result.tool_calls:
        call["arguments"] = call["arguments"].replace(key, masked)
    return result
