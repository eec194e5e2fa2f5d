"""`llmreel log`: find, read, follow and export the exchanges a proxy logged.

Every command opens the store read-mostly (`LmdbStore(create=False)`), so it works while a proxy
records into it: LMDB readers see a consistent snapshot and never block the writer. Output is a
rich table with colour on a terminal, and plain aligned text (no escape codes) when piped.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import click
import orjson
from rich.console import Console
from rich.padding import Padding
from rich.text import Text

from llmreel.cli.tables import print_table, stdout_console
from llmreel.core.exchange import CACHE_OUTCOMES
from llmreel.core.ids import id_floor, id_time
from llmreel.log.dataset import dataset_case
from llmreel.log.exchangelog import AmbiguousExchange, ExchangeLog, UnknownExchange
from llmreel.log.har import har_chunks
from llmreel.log.labels import Labels
from llmreel.log.query import LogFilter, parse_duration, parse_when
from llmreel.log.record import strip_bodies
from llmreel.log.view import (
    LS_COLUMNS,
    NUMERIC,
    STATS_COLUMNS,
    conversation_lines,
    ls_cells,
    raw_lines,
    stats_cells,
    tail_line,
)
from llmreel.storage.lmdbstore import LmdbStore, StoreError

if TYPE_CHECKING:
    from rich.progress import Progress

#: How far back `tail` looks for entries committed after newer ones (batched writers, several
#: proxies on one store): an entry committed more than this after it ended is not shown.
TAIL_LOOKBACK_S: Final = 10.0


# --- shared plumbing --------------------------------------------------------------------------


def _store_option[F: Callable[..., Any]](func: F) -> F:
    return click.option(
        "--store", default=".llmreel", show_default=True, envvar="LLMREEL_STORE",
        show_envvar=True, help="Directory of the store the proxy records into.",
    )(func)  # fmt: skip


def _filter_options(*, times: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        options = [
            click.option("--model", "models", multiple=True, metavar="NAME",
                         help="Requested or answering model; shell patterns work (gpt-4o*). Repeatable."),
            click.option("--provider", "providers", multiple=True,
                         help="openai, anthropic, gemini, ... Repeatable."),
            click.option("--cache", "caches", multiple=True, type=click.Choice(CACHE_OUTCOMES),
                         help="Cache outcome. Repeatable."),
            click.option("--status", "statuses", multiple=True, metavar="STATUS",
                         help="A code (200), a class (4xx) or error (no response, or >= 400). Repeatable."),
            click.option("--namespace", "namespaces", multiple=True, help="Cache namespace. Repeatable."),
            click.option("--run", "runs", multiple=True, metavar="ID",
                         help="Run id that `llmreel run` gave the exchanges. Repeatable."),
            click.option("--session", "sessions", multiple=True, metavar="NAME",
                         help="The llmreel-session request header. Repeatable."),
            click.option("--grep", default=None, metavar="TEXT",
                         help="Only exchanges whose prompts or responses contain TEXT (any case)."),
        ]  # fmt: skip
        if times:
            options[:0] = [
                click.option("--since", default=None, metavar="WHEN",
                             help="Started at or after WHEN: an age (10m, 2h, 7d) or an ISO time."),
                click.option("--until", default=None, metavar="WHEN",
                             help="Started at or before WHEN: an age (10m, 2h, 7d) or an ISO time."),
            ]  # fmt: skip
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _filter(kw: dict[str, Any]) -> LogFilter:
    now = time.time()
    when: dict[str, float | None] = {}
    for name in ("since", "until"):
        value = kw.pop(name, None)
        try:
            when[name] = parse_when(value, now) if value else None
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=f"--{name}") from exc
    try:
        return LogFilter(
            since=when["since"],
            until=when["until"],
            models=_split(kw.pop("models")),
            providers=_split(kw.pop("providers")),
            caches=tuple(kw.pop("caches")),
            statuses=tuple(s.lower() for s in _split(kw.pop("statuses"))),
            namespaces=_split(kw.pop("namespaces")),
            runs=_split(kw.pop("runs")),
            sessions=_split(kw.pop("sessions")),
            grep=kw.pop("grep") or None,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--status") from exc


def _label_option[F: Callable[..., Any]](func: F) -> F:
    return click.option(
        "--label", default=None, metavar="WORD",
        help="Only exchanges labelled WORD in `llmreel ui` (good, bad, ...).",
    )(func)  # fmt: skip


def _labelled(flt: LogFilter, label: str | None, exchange_log: ExchangeLog) -> LogFilter:
    if not label:
        return flt
    ids = frozenset(Labels(exchange_log.store).exchanges(label))
    return dataclasses.replace(flt, ids=ids)


def _split(values: Iterable[str]) -> tuple[str, ...]:
    """Repeated options and comma lists alike: --model a --model b == --model a,b."""
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


@contextmanager
def _open_log(path: str) -> Iterator[ExchangeLog]:
    where = os.path.abspath(path)
    if not Path(path).is_dir():
        raise click.ClickException(
            f"no llmreel store at {where}. Pass --store (or set LLMREEL_STORE) "
            "to the directory `llmreel serve --store` records into."
        )
    if not (Path(path) / "data.mdb").is_file():
        # Never create an LMDB store here: it may be an export directory or anything else.
        raise click.ClickException(
            f"{where} holds no exchange log (no data.mdb): the log lives in the LMDB store a "
            "proxy ran with. Pass that directory as --store (or LLMREEL_STORE)."
        )
    try:
        store = LmdbStore(path, create=False)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        yield ExchangeLog(store, retention_s=None)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()


def _quiet_on_broken_pipe[F: Callable[..., Any]](func: F) -> F:
    """`llmreel log ls | head` must end quietly when head has read enough."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return func(*args, **kw)
        except BrokenPipeError:
            # Python would complain again when it flushes stdout at exit: point it at devnull.
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            sys.exit(0)

    return wrapper  # type: ignore[return-value]


def _print_lines(console: Console, lines: Iterable[tuple[Text, int]]) -> None:
    if console.is_terminal:
        for text, indent in lines:
            console.print(Padding(text, (0, 0, 0, indent), expand=False) if indent else text)
        return
    # Piped: plain text, never re-wrapped (a prompt stays one line per line it had).
    out = sys.stdout
    for text, indent in lines:
        prefix = " " * indent
        out.write("\n".join(prefix + line for line in text.plain.split("\n")) + "\n")


def _json_line(record: dict[str, Any]) -> str:
    return orjson.dumps(record, default=str).decode()


# --- the commands -----------------------------------------------------------------------------


@click.group(name="log")
def log() -> None:
    """Find, read, follow and export the LLM exchanges llmreel logged.

    \b
        llmreel log ls --since 1h --grep "refund policy"
        llmreel log show 01JX3F
        llmreel log export --format har --since 1d -o session.har
    """


@log.command(name="ls")
@_store_option
@_filter_options()
@click.option("--limit", "-n", type=click.IntRange(0), default=50, show_default=True,
              help="At most this many, newest first (0: all).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_label_option
@_quiet_on_broken_pipe
def ls_command(store: str, limit: int, as_json: bool, label: str | None, **kw: Any) -> None:
    """List exchanges, newest first."""
    flt = _filter(kw)
    console = stdout_console()
    with _open_log(store) as exchange_log:
        flt = _labelled(flt, label, exchange_log)
        records = _limited(exchange_log.iter(flt), limit)
        if as_json:
            for record in records:
                click.echo(_json_line(record))
            return
        rows = [ls_cells(record) for record in records]
    if not rows:
        click.echo("no exchanges match; widen the filters (--since, --model, ...)", err=True)
        return
    print_table(LS_COLUMNS, rows, numeric=NUMERIC, console=console)


def _limited(records: Iterator[dict[str, Any]], limit: int) -> Iterator[dict[str, Any]]:
    for n, record in enumerate(records):
        if limit and n >= limit:
            return
        yield record


@log.command(name="show")
@_store_option
@click.argument("exchange_id", metavar="ID")
@click.option("--raw", is_flag=True, help="The HTTP request and response, headers and bodies.")
@click.option("--json", "as_json", is_flag=True, help="The stored record as JSON.")
@_quiet_on_broken_pipe
def show_command(store: str, exchange_id: str, raw: bool, as_json: bool) -> None:
    """Show one exchange (by id, or a unique prefix of it) as a conversation."""
    with _open_log(store) as exchange_log:
        try:
            record = exchange_log.get(exchange_id)
        except (UnknownExchange, AmbiguousExchange) as exc:
            raise click.ClickException(str(exc.args[0])) from exc
    if as_json:
        click.echo(orjson.dumps(record, option=orjson.OPT_INDENT_2, default=str).decode())
        return
    console = stdout_console()
    if raw:
        _print_lines(console, ((line, 0) for line in raw_lines(record)))
    else:
        _print_lines(console, conversation_lines(record))


@log.command(name="tail")
@_store_option
@_filter_options(times=False)
@click.option(
    "--lines",
    "-n",
    type=click.IntRange(0),
    default=10,
    show_default=True,
    help="How many past exchanges to show first.",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.05),
    default=0.3,
    show_default=True,
    help="Seconds between looks at the store.",
)
@click.option(
    "--count", type=click.IntRange(1), default=None, help="Exit after this many new exchanges."
)
@click.option(
    "--duration", type=click.FloatRange(0), default=None, help="Exit after this many seconds."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")  # fmt: skip
@_quiet_on_broken_pipe
def tail_command(
    store: str,
    lines: int,
    interval: float,
    count: int | None,
    duration: float | None,
    as_json: bool,
    **kw: Any,
) -> None:
    """Follow exchanges as they are logged, one line each, until Ctrl-C."""
    flt = _filter(kw)
    console = stdout_console()
    out = sys.stdout

    def emit(record: dict[str, Any]) -> None:
        if as_json:
            out.write(_json_line(record) + "\n")
        elif console.is_terminal:
            console.print(tail_line(record), soft_wrap=True)
        else:
            out.write(tail_line(record).plain + "\n")
        out.flush()

    deadline = time.monotonic() + duration if duration is not None else None
    try:
        _follow(store, flt, lines, interval, count, deadline, emit)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how one stops following: exit 0, no traceback


def _follow(
    store: str,
    flt: LogFilter,
    lines: int,
    interval: float,
    count: int | None,
    deadline: float | None,
    emit: Callable[[dict[str, Any]], None],
) -> None:
    seen: dict[str, float] = {}  # ids already shown, or older than the start, in the lookback
    shown = 0
    started = False
    while True:
        with _open_log(store) as exchange_log:
            try:
                if not started:
                    started = True
                    floor = id_floor(time.time() - TAIL_LOOKBACK_S).encode()
                    for key, _ in exchange_log.store.iter_raw(b"log", start=floor):
                        seen[key.decode()] = id_time(key.decode())
                    past = list(_limited(exchange_log.iter(flt), lines))
                    for record in reversed(past):
                        seen[str(record.get("id"))] = id_time(str(record.get("id")))
                        emit(record)
                while deadline is None or time.monotonic() < deadline:
                    time.sleep(interval)
                    since = time.time() - TAIL_LOOKBACK_S
                    fresh = [
                        r
                        for r in exchange_log.iter(flt, newest_first=False, after=id_floor(since))
                        if r.get("id") not in seen
                    ]
                    for record in fresh:
                        seen[str(record.get("id"))] = id_time(str(record.get("id")))
                        emit(record)
                        shown += 1
                        if count is not None and shown >= count:
                            return
                    for old in [k for k, t in seen.items() if t < since]:
                        del seen[old]
                return
            except StoreError:
                # Most likely the proxy grew the map under this reader: open a fresh view.
                continue


@log.command(name="export")
@_store_option
@_filter_options()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "har", "dataset"]),
    default="jsonl",
    show_default=True,
    help="jsonl: one record per line. har: HAR 1.2 for devtools. dataset: one eval case per "
    "line (input conversation, expected answer, label and note).",
)
@click.option(
    "-o",
    "--output",
    default="-",
    show_default=True,
    metavar="FILE",
    help="Where to write; - is standard output.",
)
@click.option("--no-bodies", is_flag=True, help="Leave prompts and responses out (jsonl only).")
@click.option("--limit", type=click.IntRange(0), default=0, help="At most this many (0: all).")  # fmt: skip
@_label_option
@_quiet_on_broken_pipe
def export_command(
    store: str, fmt: str, output: str, no_bodies: bool, limit: int, label: str | None, **kw: Any
) -> None:
    """Export exchanges, oldest first, with headers and full bodies (streams included)."""
    flt = _filter(kw)
    err = Console(stderr=True, highlight=False)
    with _open_log(store) as exchange_log, _output(output) as sink:
        flt = _labelled(flt, label, exchange_log)
        labels = Labels(exchange_log.store).exchanges() if fmt == "dataset" else {}
        records = _limited(exchange_log.iter(flt, newest_first=False, content=True), limit)
        total = exchange_log.count() if flt == LogFilter() and not limit else None
        written = 0

        def counted(items: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            nonlocal written
            for item in items:
                written += 1
                yield item

        progress = _progress(err) if err.is_terminal and output != "-" else None
        if progress is not None:
            progress.start()
            task = progress.add_task("exporting", total=total)
            records = _advancing(records, lambda: progress.advance(task))
        try:
            if fmt == "har":
                for chunk in har_chunks(counted(records), creator_version=_version()):
                    sink.write(chunk)
            elif fmt == "dataset":
                for record in counted(records):
                    case = dataset_case(record, labels.get(str(record.get("id"))))
                    sink.write(orjson.dumps(case, default=str) + b"\n")
            else:
                for record in counted(records):
                    sink.write(orjson.dumps(strip_bodies(record) if no_bodies else record,
                                            default=str) + b"\n")  # fmt: skip
        finally:
            if progress is not None:
                progress.stop()
    if output != "-":
        hint = " Open it in a browser's devtools: Network, then Import HAR." if fmt == "har" else ""
        click.echo(f"wrote {written} exchanges to {output}.{hint}", err=True)


def _advancing(
    records: Iterator[dict[str, Any]], advance: Callable[[], None]
) -> Iterator[dict[str, Any]]:
    for record in records:
        advance()
        yield record


def _progress(console: Console) -> Progress:
    # Imported here: rich.progress costs ~70 ms that no other command should pay.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        console=console, transient=True,
    )  # fmt: skip


@contextmanager
def _output(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdout.buffer
        return
    try:
        # 0600: an export holds prompts and answers.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}; pick another -o") from exc
    with open(fd, "wb") as handle:
        yield handle


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("llmreel")
    except metadata.PackageNotFoundError:
        return "0"


@log.command(name="stats")
@_store_option
@_filter_options()
@click.option("--json", "as_json", is_flag=True, help="Rows and total as one JSON document.")
@_quiet_on_broken_pipe
def stats_command(store: str, as_json: bool, **kw: Any) -> None:
    """Totals by provider and model: requests, tokens, cost, savings, hit ratio, latency.

    Tokens and cost are what was billed upstream; "saved" is what the cache hits would have
    cost; the hit ratio counts the requests that looked in the cache (hit, miss, offline_miss);
    p50 and p95 are the durations clients saw (nearest rank).
    """
    flt = _filter(kw)
    with _open_log(store) as exchange_log:
        rows, total = exchange_log.stats(flt)
    if as_json:
        doc = {"rows": [r.as_dict() for r in rows], "total": total.as_dict()}
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return
    if not rows:
        click.echo("no exchanges match; widen the filters (--since, --model, ...)", err=True)
        return
    footer = stats_cells(total)
    footer[0], footer[1] = Text("total"), Text("")
    print_table(STATS_COLUMNS, [stats_cells(r) for r in rows], numeric=NUMERIC, footer=footer)


@log.command(name="prune")
@_store_option
@click.option("--older-than", default="30d", show_default=True, metavar="AGE",
              help="Remove exchanges that ended longer ago than AGE (30s, 10m, 2h, 7d, 1w).")  # fmt: skip
def prune_command(store: str, older_than: str) -> None:
    """Remove old exchanges from the log (the proxy also does this, per --log-retention)."""
    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from exc
    with _open_log(store) as exchange_log:
        removed = exchange_log.prune(age)
        left = exchange_log.count()
    click.echo(f"removed {removed} exchanges older than {older_than}; {left} left in {store}")
