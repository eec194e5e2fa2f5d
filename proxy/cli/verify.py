"""`llmreel verify --live`: re-send recordings upstream and report how the answers drifted.

For a nightly job: the provider still answers the recorded requests, but has the shape of its
answers changed (fields, types, tool calls, usage)? Exits 1 on drift, 2 when it cannot ask.
"""

from __future__ import annotations

import base64
import json
import os
import random
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import click
import orjson

from llmreel.core.credentials import KeySource, key_source
from llmreel.core.drift import Drift, compare, json_paths, merged_paths
from llmreel.core.wire import header, recordable_headers
from llmreel.providers import DEFAULT_HOSTS, Endpoint, classify, parse_host_mappings, summarize
from llmreel.providers.sse import looks_like_sse, parse_sse
from llmreel.storage.lmdbstore import StoreError
from llmreel.storage.records import Recording
from llmreel.storage.stores import open_store


class CannotAsk(Exception):
    """No key or no network: nothing can be compared (exit status 2)."""


@dataclass(slots=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: list[tuple[str, str]]


@click.command("verify")
@click.option("--store", default=".llmreel", show_default=True, envvar="LLMREEL_STORE",
              help="The recordings: an LMDB store or an export directory.")  # fmt: skip
@click.option("--live", is_flag=True, help="Re-send recordings upstream and report drift.")
@click.option("--sample", type=click.IntRange(1), default=None, metavar="N",
              help="Check N recordings chosen at random (seeded: the same N each time).")  # fmt: skip
@click.option("--namespace", default=None, help="Only this namespace.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on standard output.")
@click.option("--update", is_flag=True, help="Record the new answers over the old ones.")
@click.option("--usage-tolerance", type=click.FloatRange(0), default=0.5, show_default=True,
              help="Relative change in input or output tokens that counts as drift.")  # fmt: skip
@click.option("--provider-host", "hosts", multiple=True, metavar="HOST=PROVIDER",
              help="Treat HOST as PROVIDER, as for serve. Repeatable.")  # fmt: skip
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds per call.")
def verify(store: str, live: bool, sample: int | None, namespace: str | None, as_json: bool,
           update: bool, usage_tolerance: float, hosts: tuple[str, ...], timeout: float) -> None:  # fmt: skip
    """Check recordings. With --live, re-send them upstream and report drift in each answer:
    the status, JSON paths added, removed or retyped, tool-call structure, and usage beyond a
    tolerance. Exits 1 on drift, 2 without network or keys.

    Without --live it checks, offline, that every recording decodes and matches its key (as
    `llmreel cache verify`).
    """
    if not live:
        from llmreel.cli.cache import verify_command

        click.get_current_context().invoke(verify_command, store=store)
        return
    try:
        host_map = DEFAULT_HOSTS.merged(parse_host_mappings(hosts))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--provider-host") from exc
    try:
        source = open_store(store, create=False)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        recordings = sorted(source.iter(namespace), key=lambda r: (r.namespace, r.key, r.seq))
        if sample is not None and sample < len(recordings):
            recordings = sorted(random.Random(0).sample(recordings, sample), key=lambda r: r.key)
        jobs = [(rec, _endpoint(rec, host_map)) for rec in recordings]
        try:
            _check_keys(ep for _, ep in jobs)
            results = [_verify_one(rec, ep, usage_tolerance, timeout) for rec, ep in jobs]
        except CannotAsk as exc:
            click.echo(f"llmreel verify --live: {exc}", err=True)
            sys.exit(2)
        if update:
            for (rec, _), (drift, answer) in zip(jobs, results, strict=True):
                if drift.drifted and 200 <= answer.status < 300:
                    source.put(_rerecorded(rec, answer, host_map))
            source.flush(30)
    finally:
        source.close()
    drifted = [
        (rec, drift) for (rec, _), (drift, _) in zip(jobs, results, strict=True) if drift.drifted
    ]
    if as_json:
        click.echo(json.dumps({
            "checked": len(jobs),
            "drifted": len(drifted),
            "updated": update,
            "results": [
                {"namespace": rec.namespace, "key": rec.key, "seq": rec.seq, "url": _url(rec.request),
                 "drifted": drift.drifted, "drift": drift.as_dict()}
                for (rec, _), (drift, _) in zip(jobs, results, strict=True)
            ],
        }, indent=2))  # fmt: skip
    else:
        for rec, drift in drifted:
            click.echo(f"DRIFT {rec.key} namespace={rec.namespace} {_url(rec.request)}")
            click.echo("".join(f"  {line}\n" for line in drift.lines()), nl=False)
        click.echo(f"{len(jobs)} recording(s) re-sent, {len(drifted)} drifted"
                   + (", new answers recorded" if update and drifted else ""), err=bool(drifted))  # fmt: skip
    if drifted and not update:
        sys.exit(1)


def _endpoint(rec: Recording, hosts: Any) -> Endpoint | None:
    req = rec.request
    host = str(req.get("host", ""))
    hostport = f"[{host}]:{req.get('port')}" if ":" in host else f"{host}:{req.get('port')}"
    return classify(str(req.get("method", "POST")), hostport, str(req.get("path", "")), hosts)


def _credential(ep: Endpoint | None) -> KeySource | None:
    return key_source(ep.provider, ep.api) if ep is not None else None


def _check_keys(endpoints: Any) -> None:
    missing = set()
    for ep in endpoints:
        cred = _credential(ep)
        if cred is not None and not any(os.environ.get(name) for name in cred.env):
            missing.add(" or ".join(cred.env))
    if missing:
        raise CannotAsk(
            f"no {', '.join(sorted(missing))} in the environment, so recordings for that "
            "provider cannot be re-sent. Set the key (a CI secret) and run again."
        )


def _verify_one(
    rec: Recording, ep: Endpoint | None, tolerance: float, timeout: float
) -> tuple[Drift, Answer]:
    answer = _send(rec, ep, timeout)
    old_type = header(rec.headers, "content-type") or ""
    drift = compare(
        old_status=rec.status, new_status=answer.status,
        old_paths=_shape(rec.body), new_paths=_shape(answer.body),
        old_tools=_tools(ep, rec.body, old_type), new_tools=_tools(ep, answer.body, answer.content_type),
        old_usage=rec.usage, new_usage=_usage(ep, answer),
        tolerance=tolerance,
    )  # fmt: skip
    return drift, answer


def _send(rec: Recording, ep: Endpoint | None, timeout: float) -> Answer:
    req = rec.request
    headers = {str(k): str(v) for k, v in (req.get("headers") or {}).items()}
    headers["content-type"] = "application/json"
    headers["accept-encoding"] = "identity"
    cred = _credential(ep)
    if cred is not None:
        key = next(os.environ[n] for n in cred.env if os.environ.get(n))
        headers[cred.header] = cred.value(key)
    request = urllib.request.Request(_url(req), data=_body(req.get("body")), headers=headers,
                                     method=str(req.get("method", "POST")))  # fmt: skip
    context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or None)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as reply:
            return Answer(reply.status, reply.headers.get("content-type", ""), reply.read(),
                          list(reply.headers.items()))  # fmt: skip
    except urllib.error.HTTPError as exc:
        return Answer(
            exc.code, exc.headers.get("content-type", ""), exc.read(), list(exc.headers.items())
        )
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CannotAsk(
            f"could not reach {req.get('host')}: {reason}. verify --live needs network access "
            "to the provider."
        ) from exc


def _url(req: dict[str, Any]) -> str:
    from urllib.parse import urlencode

    scheme, host, port = req.get("scheme", "https"), str(req.get("host", "")), req.get("port")
    default = {"http": 80, "https": 443}.get(str(scheme))
    netloc = f"[{host}]" if ":" in host else host
    netloc += "" if port in (None, default) else f":{port}"
    query = urlencode([tuple(pair) for pair in req.get("query") or []])
    return f"{scheme}://{netloc}{req.get('path', '')}" + (f"?{query}" if query else "")


def _body(body: Any) -> bytes | None:
    if body is None:
        return None
    if isinstance(body, dict) and set(body) == {"$text"}:
        return str(body["$text"]).encode()
    if isinstance(body, dict) and set(body) == {"$base64"}:
        return base64.b64decode(str(body["$base64"]))
    return orjson.dumps(body)


def _documents(body: bytes) -> list[Any]:
    """The JSON documents an answer is made of: one, or one per stream event."""
    if looks_like_sse(body):
        docs = []
        for event in parse_sse(body):
            try:
                docs.append(orjson.loads(event.data))
            except orjson.JSONDecodeError:
                continue  # "[DONE]" and other non-JSON markers
        return docs
    try:
        return [orjson.loads(body)]
    except orjson.JSONDecodeError:
        return []


def _shape(body: bytes) -> dict[str, str]:
    docs = _documents(body)
    return (
        json_paths(docs[0]) if len(docs) == 1 and not looks_like_sse(body) else merged_paths(docs)
    )


def _tools(
    ep: Endpoint | None, body: bytes, content_type: str
) -> list[tuple[str, tuple[str, ...]]]:
    if ep is None:
        return []
    calls = []
    for call in summarize(ep, body, content_type).tool_calls:
        try:
            args = orjson.loads(call.arguments or "{}")
        except orjson.JSONDecodeError:
            args = {}
        calls.append((call.name, tuple(sorted(args)) if isinstance(args, dict) else ()))
    return calls


def _usage(ep: Endpoint | None, answer: Answer) -> dict[str, int] | None:
    if ep is None:
        return None
    usage = summarize(ep, answer.body, answer.content_type).usage
    return usage.as_dict() if usage is not None else None


def _rerecorded(rec: Recording, answer: Answer, hosts: Any) -> Recording:
    ep = _endpoint(rec, hosts)
    summary = summarize(ep, answer.body, answer.content_type) if ep is not None else None
    return Recording(
        key=rec.key, namespace=rec.namespace, request=rec.request, status=answer.status,
        headers=recordable_headers(answer.headers), body=answer.body,
        chunks=[(0.0, len(answer.body))] if rec.is_stream else [],
        recorded_at=time.time(), provider=rec.provider,
        model=(summary.model if summary else None) or rec.model,
        usage=summary.usage.as_dict() if summary and summary.usage else None, seq=rec.seq,
    )  # fmt: skip
