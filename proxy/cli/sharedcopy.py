"""`llmreel cache push|pull`: copy recordings between a local store or export directory and the
shared tier in Redis (docs/shared.md). Values are the proxies' own (storage/shared.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import click

from llmreel.cli.cache import _opened, _progress, _write_all, store_option
from llmreel.engine.options import DEFAULT_SHARED_MAX_BYTES
from llmreel.storage.records import Recording
from llmreel.storage.shared import (
    ENV_URL,
    SharedError,
    check_url,
    decode,
    encode,
    fetch_values,
    masked,
    recording_names,
    sync_client,
    write_many,
)

_BATCH = 256


def _shared_option[F: Callable[..., Any]](func: F) -> F:
    return click.option(
        "--shared", "url", required=True, envvar=ENV_URL, show_envvar=True, metavar="URL",
        help="The Redis/Valkey URL: redis://HOST:PORT/DB or rediss://... (password in the URL).",
    )(func)  # fmt: skip


def _namespace_option[F: Callable[..., Any]](func: F) -> F:
    return click.option("--namespace", default=None, help="Only this namespace (default: all).")(
        func
    )


def _client(url: str) -> Any:
    try:
        client = sync_client(check_url(url))
        client.ping()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shared") from exc
    except Exception as exc:
        raise click.ClickException(
            f"cannot reach {masked(url)}: {type(exc).__name__}: {exc}. Check the host, port and "
            "password (in the URL), and that Redis or Valkey is running."
        ) from exc
    return client


@click.command("push")
@_shared_option
@_namespace_option
@store_option
@click.option("--shared-max-bytes", type=click.IntRange(1), default=DEFAULT_SHARED_MAX_BYTES,
              show_default=True, metavar="BYTES",
              help="Recordings larger than this (compressed) are not pushed, as the proxy would not.")  # fmt: skip
def push_command(url: str, namespace: str | None, store: str, shared_max_bytes: int) -> None:
    """Copy the store's recordings (or one namespace's) to the shared tier in Redis.

    \b
        llmreel cache push --shared redis://cache.internal:6379/0 --store tests/recordings
    """
    client = _client(url)
    skipped = 0

    def packed(recs: Iterator[Recording]) -> Iterator[tuple[Recording, bytes]]:
        nonlocal skipped
        for rec in recs:
            try:
                yield rec, encode(rec, shared_max_bytes)
            except SharedError:
                skipped += 1

    pushed = 0
    with _opened(store) as source:
        total = source.stats().entries
        batch: list[tuple[Recording, bytes]] = []
        for item in packed(_progress(source.iter(namespace), total, "pushing")):
            batch.append(item)
            if len(batch) >= _BATCH:
                pushed += write_many(client, batch)
                batch = []
        if batch:
            pushed += write_many(client, batch)
    click.echo(
        f"pushed {pushed} recordings to {masked(url)}"
        + (f"; {skipped} over --shared-max-bytes stayed local" if skipped else "")
    )


@click.command("pull")
@_shared_option
@_namespace_option
@store_option
def pull_command(url: str, namespace: str | None, store: str) -> None:
    """Copy the shared tier's recordings (or one namespace's) from Redis into the store.

    \b
        llmreel cache pull --shared redis://cache.internal:6379/0 --namespace ci
    """
    client = _client(url)
    names = recording_names(client, namespace)
    unreadable = pulled = 0

    def recordings() -> Iterator[Recording]:
        nonlocal unreadable, pulled
        for start in range(0, len(names), _BATCH):
            for _, value in fetch_values(client, names[start : start + _BATCH]):
                try:
                    rec = decode(value)
                except SharedError as exc:
                    unreadable += 1
                    click.echo(f"skipped: {exc}", err=True)
                    continue
                pulled += 1
                yield rec

    with _opened(store, create=True) as target:
        _write_all(target, _progress(recordings(), len(names), "pulling"))
        target.flush()
    click.echo(
        f"pulled {pulled} recordings from {masked(url)} into {store}"
        + (f"; {unreadable} unreadable ones skipped" if unreadable else "")
    )
