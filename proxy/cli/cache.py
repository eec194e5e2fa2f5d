"""`llmreel cache`: export, import, list, show, remove, count, prune, verify and audit recordings.

Every command takes `--store`, an LMDB store or an export directory, and works while a proxy
records into it: LMDB reads are snapshots, and export files are replaced atomically.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from llmreel.cli.tables import print_table
from llmreel.core.audit import find, find_in_query
from llmreel.core.keys import request_digest
from llmreel.core.timeparse import parse_duration
from llmreel.log.packing import unpack_content
from llmreel.storage.audit import audit
from llmreel.storage.dirstore import DirStore, sync_export
from llmreel.storage.export import dumps, to_export
from llmreel.storage.lmdbstore import LmdbStore, Store, StoreError, entry_key, parse_entry_key
from llmreel.storage.records import RecordError, Recording, unpack
from llmreel.storage.stores import open_store, store_kind

__all__ = ["cache", "parse_duration"]

EntryId = tuple[str, str, int]  # (namespace, key, seq)

_PROGRESS_MIN = 200  # entries before a progress bar is worth drawing
_IMPORT_BATCH = 256


def store_option[F: Callable[..., Any]](func: F) -> F:
    return click.option(
        "--store",
        default=".llmreel",
        show_default=True,
        envvar="LLMREEL_STORE",
        show_envvar=True,
        help="The recordings: an LMDB store directory, or an export directory.",
    )(func)


def allow_option[F: Callable[..., Any]](func: F) -> F:
    return click.option(
        "--allow",
        multiple=True,
        metavar="FINGERPRINT",
        help="A finding that is not a credential, by the fingerprint shown as "
        "[redacted FINGERPRINT]. Repeatable.",
    )(func)


@click.group("cache")
def cache() -> None:
    """Manage recordings: export and import them, list, show, remove, prune, verify, audit.

    \b
        llmreel cache export tests/recordings      # reviewable files, one per recording
        llmreel run --mode offline --store tests/recordings -- pytest
    """


# --------------------------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def _opened(path: str, *, create: bool = False) -> Iterator[Store]:
    try:
        if not create and store_kind(path) == "new":
            # Reading must not leave an empty LMDB behind in a directory that held none.
            raise StoreError(
                f"no recordings at {path}: record into it first (`llmreel run -- CMD`), or "
                "pass --store (LLMREEL_STORE) to name the store or export directory"
            )
        store = open_store(path, create=create)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        yield store
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _ids(store: Store) -> list[EntryId]:
    """Every entry's identity, reading as little as each kind of store allows."""
    if isinstance(store, LmdbStore):
        return [parse_entry_key(k) for k, _ in store.iter_raw(b"entries")]
    if isinstance(store, DirStore):
        ids = []
        for entry in store.files():
            namespace = entry.namespace
            if namespace is None:  # a shortened directory name: the file knows
                namespace = store.read_file(entry).namespace
            ids.append((namespace, entry.key, entry.seq))
        return sorted(ids, key=lambda i: entry_key(*i))
    return [(r.namespace, r.key, r.seq) for r in store.iter()]


def _label(entry: EntryId) -> str:
    namespace, key, seq = entry
    return f"{namespace}/{key}" + (f" (seq {seq})" if seq else "")


def _match(ids: list[EntryId], spec: str, namespace: str | None) -> list[EntryId]:
    """Entries whose key is `spec` or starts with it; an error unless exactly one key matches."""
    prefix = spec.strip().lower()
    if not prefix:
        raise click.BadParameter("an empty key")
    found = [i for i in ids if i[1].lower().startswith(prefix)]
    if namespace is not None:
        found = [i for i in found if i[0] == namespace]
    keys = sorted({i[1] for i in found})
    if not keys:
        where = f" in namespace {namespace!r}" if namespace is not None else ""
        raise click.ClickException(
            f"no recording's key starts with {spec!r}{where}; list them with `llmreel cache ls`"
        )
    if len(keys) > 1:
        shown = ", ".join(keys[:10]) + (", ..." if len(keys) > 10 else "")
        raise click.ClickException(
            f"{spec!r} is the start of {len(keys)} keys ({shown}); give more of the key"
        )
    return found


def _when(timestamp: float) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(timestamp))


def _url(request: dict[str, Any]) -> str:
    scheme = request.get("scheme", "https")
    host = request.get("host", "?")
    port = request.get("port")
    default = {"http": 80, "https": 443}.get(str(scheme))
    hostport = host if port in (None, default) else f"{host}:{port}"
    return f"{scheme}://{hostport}{request.get('path', '')}"


def _progress(items: Iterable[Recording], total: int, label: str) -> Iterator[Recording]:
    # Only a person watching a terminal wants a bar; logs and pipes would get control codes.
    if total < _PROGRESS_MIN or not sys.stderr.isatty():
        yield from items
        return
    with click.progressbar(items, length=total, label=label, file=sys.stderr) as bar:
        yield from bar


# --------------------------------------------------------------------------------------------
# export / import


@cache.command("export")
@click.argument("directory", type=click.Path(file_okay=False))
@store_option
@allow_option
def export_command(directory: str, store: str, allow: tuple[str, ...]) -> None:
    """Write every recording to DIRECTORY as readable JSON, one file per recording.

    The export is deterministic: files that would not change are not rewritten, and files of
    recordings that are gone are removed, so an unchanged store exports to zero git diff.
    Recordings holding anything shaped like a credential are not written (exit status 1);
    see `llmreel cache audit`.
    """
    target = Path(directory)
    if target.resolve() == Path(store).resolve():
        raise click.UsageError("DIRECTORY is the store itself; export to another directory")
    try:
        kind = store_kind(target)
    except StoreError as exc:
        raise click.ClickException(
            f"{exc}\n(`cache export` only writes into a new, empty or earlier export directory.)"
        ) from exc
    if kind == "lmdb":
        raise click.ClickException(
            f"{target} is an LMDB store; export into a new or empty directory instead"
        )
    allowed = frozenset(allow)

    def refuse(rec: Recording, data: bytes) -> str | None:
        findings = find_in_query(rec.request.get("query", []), allowed)
        findings += find(data.decode("utf-8", "replace"), allowed)
        return ", ".join(sorted({str(f) for f in findings})) if findings else None

    with _opened(store) as source:
        total = source.stats().entries
        try:
            report = sync_export(
                _progress(source.iter(), total, "exporting"), target, refuse=refuse
            )
        except StoreError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(
        f"exported {report.entries} recordings to {target}: {report.written} written, "
        f"{report.unchanged} unchanged, {report.removed} removed"
    )
    if report.refused:
        for rec, reason in report.refused:
            click.echo(f"not exported {_label((rec.namespace, rec.key, rec.seq))}: {reason}",
                       err=True)  # fmt: skip
        click.echo(
            f"{len(report.refused)} recordings hold something shaped like a credential and were "
            "not exported. Remove them (`llmreel cache rm KEY`) and record again without it, or "
            "pass --allow FINGERPRINT for findings that are not credentials.",
            err=True,
        )
        sys.exit(1)


@cache.command("import")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@store_option
@click.option("--replace", is_flag=True,
              help="Make the store hold exactly DIRECTORY's recordings (default: merge).")  # fmt: skip
def import_command(directory: str, store: str, replace: bool) -> None:
    """Load the recordings of DIRECTORY (an export, or another store) into the store.

    Recordings with the same namespace and key are overwritten; others are kept unless
    --replace is given.
    """
    if Path(directory).resolve() == Path(store).resolve():
        raise click.UsageError("DIRECTORY is the store itself")
    with _opened(directory) as source, _opened(store, create=True) as target:
        before = set(_ids(target))
        seen: set[EntryId] = set()
        recs = source.iter()
        total = source.stats().entries
        _write_all(target, _tracked(_progress(recs, total, "importing"), seen))
        removed = 0
        if replace:
            stale = sorted(before - seen, key=lambda i: entry_key(*i))
            removed = _delete(target, stale)
        target.flush()
    new = len(seen - before)
    click.echo(
        f"imported {len(seen)} recordings into {store}: {new} new, {len(seen) - new} replaced"
        + (f", {removed} removed" if replace else "")
    )


def _tracked(recs: Iterable[Recording], seen: set[EntryId]) -> Iterator[Recording]:
    for rec in recs:
        seen.add((rec.namespace, rec.key, rec.seq))
        yield rec


def _write_all(target: Store, recs: Iterable[Recording]) -> None:
    if isinstance(target, LmdbStore):
        # One transaction per batch, not per recording: each commit is an fsync.
        batch: list[Recording] = []
        for rec in recs:
            batch.append(rec)
            if len(batch) >= _IMPORT_BATCH:
                target.put_many(batch)
                batch = []
        if batch:
            target.put_many(batch)
        return
    for rec in recs:
        target.put(rec)


def _delete(target: Store, entries: list[EntryId]) -> int:
    removed = sum(1 for entry in entries if target.delete(*entry))
    if isinstance(target, LmdbStore) and entries:
        # Last-use times of recordings that are gone would only mislead `prune --unused-since`.
        target.write_raw([(b"used", entry_key(*entry), None) for entry in entries])
    return removed


# --------------------------------------------------------------------------------------------
# ls / show / rm / stats


def _summary(rec: Recording) -> dict[str, Any]:
    return {
        "key": rec.key,
        "namespace": rec.namespace,
        "seq": rec.seq,
        "provider": rec.provider,
        "model": rec.model,
        "method": rec.request.get("method"),
        "url": _url(rec.request),
        "status": rec.status,
        "stream": rec.is_stream,
        "body_bytes": len(rec.body),
        "recorded_at": rec.recorded_at,
        "usage": rec.usage,
    }


@cache.command("ls")
@store_option
@click.option("--namespace", default=None, help="Only this namespace.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def ls_command(store: str, namespace: str | None, as_json: bool) -> None:
    """List recordings: key, namespace, model, request, when, size."""
    with _opened(store) as source:
        rows = [_summary(rec) for rec in source.iter(namespace)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no recordings" + (f" in namespace {namespace!r}" if namespace else ""))
        return
    table = [
        [
            r["key"][:12] + (f"#{r['seq']}" if r["seq"] else ""),
            r["namespace"],
            r["model"] or "-",
            f"{r['method']} {r['url']}",
            "stream" if r["stream"] else "json",
            str(r["body_bytes"]),
            _when(r["recorded_at"]),
        ]
        for r in rows
    ]
    print_table(["KEY", "NAMESPACE", "MODEL", "REQUEST", "BODY", "BYTES", "RECORDED (UTC)"],
                table)  # fmt: skip


@cache.command("show")
@click.argument("key")
@store_option
@click.option("--namespace", default=None, help="The namespace, when the key is in several.")
@click.option("--seq", type=int, default=None, help="The occurrence, in sequence mode.")
def show_command(key: str, store: str, namespace: str | None, seq: int | None) -> None:
    """Print one recording in its readable export form. KEY may be a unique prefix."""
    with _opened(store) as source:
        found = _match(_ids(source), key, namespace)
        if seq is not None:
            found = [i for i in found if i[2] == seq]
        if len(found) != 1:
            choices = "; ".join(_label(i) for i in found[:10]) or "none"
            raise click.ClickException(
                f"{len(found)} recordings have this key ({choices}); pick one with "
                "--namespace and --seq"
            )
        rec = source.get(*found[0])
    if rec is None:
        raise click.ClickException(f"{_label(found[0])} was removed meanwhile")
    click.echo(dumps(to_export(rec)).decode("utf-8"), nl=False)


@cache.command("rm")
@click.argument("keys", nargs=-1, required=True)
@store_option
@click.option("--namespace", default=None, help="Only in this namespace (default: all).")
def rm_command(keys: tuple[str, ...], store: str, namespace: str | None) -> None:
    """Remove recordings by key (or unique prefix), in every namespace unless --namespace.

    Nothing is removed unless every KEY matches.
    """
    with _opened(store) as target:
        ids = _ids(target)
        doomed: list[EntryId] = []
        for spec in keys:
            doomed.extend(i for i in _match(ids, spec, namespace) if i not in doomed)
        _delete(target, doomed)
    for entry in doomed:
        click.echo(f"removed {_label(entry)}")


@cache.command("stats")
@store_option
@click.option("--json", "as_json", is_flag=True, help="JSON, for scripts.")
def stats_command(store: str, as_json: bool) -> None:
    """Count recordings and bytes, by namespace, provider and model."""
    groups: dict[str, dict[str, list[int]]] = {
        "namespace": defaultdict(lambda: [0, 0]),
        "provider": defaultdict(lambda: [0, 0]),
        "model": defaultdict(lambda: [0, 0]),
    }
    entries = body_bytes = 0
    with _opened(store) as source:
        size = source.stats().size_bytes
        for rec in source.iter():
            entries += 1
            body_bytes += len(rec.body)
            for name, value in (
                ("namespace", rec.namespace),
                ("provider", rec.provider or "-"),
                ("model", rec.model or "-"),
            ):
                groups[name][value][0] += 1
                groups[name][value][1] += len(rec.body)
    if as_json:
        out: dict[str, Any] = {"entries": entries, "store_bytes": size, "body_bytes": body_bytes}
        for name, counts in groups.items():
            out[f"by_{name}"] = {k: {"entries": c[0], "body_bytes": c[1]}
                                 for k, c in sorted(counts.items())}  # fmt: skip
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"store: {store}\nentries: {entries}\nstore bytes: {size}\nbody bytes: {body_bytes}")
    for name, counts in groups.items():
        if not counts:
            continue
        rows = [[k, str(c[0]), str(c[1])] for k, c in sorted(counts.items())]
        click.echo()
        print_table([name.upper(), "ENTRIES", "BODY BYTES"], rows)


# --------------------------------------------------------------------------------------------
# prune


@cache.command("prune")
@store_option
@click.option("--older-than", callback=_duration, metavar="AGE",
              help="Recordings made more than AGE ago (30d, 12h, 2w).")  # fmt: skip
@click.option("--namespace", "namespaces", multiple=True, metavar="NAME",
              help="Recordings in this namespace. Repeatable.")  # fmt: skip
@click.option("--unused-since", callback=_duration, metavar="AGE",
              help="Recordings not replayed for AGE (never replayed: counted from when they "
              "were made). LMDB stores only.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def prune_command(
    store: str,
    older_than: float | None,
    namespaces: tuple[str, ...],
    unused_since: float | None,
    dry_run: bool,
) -> None:
    """Remove recordings matching every condition given (at least one is needed)."""
    if older_than is None and not namespaces and unused_since is None:
        raise click.UsageError("say what to prune: --older-than, --namespace or --unused-since")
    now = time.time()
    with _opened(store) as target:
        used: dict[bytes, float] = {}
        if unused_since is not None:
            if not isinstance(target, LmdbStore):
                raise click.ClickException(
                    "export directories don't track when recordings were last used (that would "
                    "rewrite committed files on every run). Prune the LMDB working store and "
                    "export again, or use --older-than."
                )
            used = _last_used(target)
        doomed: list[EntryId] = []
        for rec in target.iter(namespaces[0] if len(namespaces) == 1 else None):
            if namespaces and rec.namespace not in namespaces:
                continue
            if older_than is not None and now - rec.recorded_at < older_than:
                continue
            if unused_since is not None:
                ek = entry_key(rec.namespace, rec.key, rec.seq)
                if now - used.get(ek, rec.recorded_at) < unused_since:
                    continue
            doomed.append((rec.namespace, rec.key, rec.seq))
        if not dry_run:
            _delete(target, doomed)
    verb = "would remove" if dry_run else "removed"
    for entry in doomed:
        click.echo(f"{verb} {_label(entry)}")
    click.echo(f"{verb} {len(doomed)} recordings")


def _last_used(store: LmdbStore) -> dict[bytes, float]:
    """Last-use times (unix seconds) written by the proxy into the `used` database."""
    used: dict[bytes, float] = {}
    for key, value in store.iter_raw(b"used"):
        with contextlib.suppress(ValueError):
            used[key] = float(value.decode("ascii"))
    return used


# --------------------------------------------------------------------------------------------
# verify


@cache.command("verify")
@store_option
def verify_command(store: str) -> None:
    """Check that every recording decodes and that its key matches its request.

    Exits with status 1, listing the bad entries, if any is not.
    """
    bad: list[str] = []
    count = 0
    with _opened(store) as source:
        for label, load, where in _raw_entries(source):
            count += 1
            try:
                rec = load()
            except (RecordError, StoreError) as exc:
                bad.append(f"{label}: does not decode: {exc}")
                continue
            problem = _check(rec, where)
            if problem:
                bad.append(f"{label}: {problem}")
    for line in bad:
        click.echo(line)
    if bad:
        click.echo(
            f"{len(bad)} of {count} recordings are bad. Remove them with `llmreel cache rm KEY` "
            "and record them again.",
            err=True,
        )
        sys.exit(1)
    click.echo(f"{count} recordings verified: all decode, and every key matches its request")


def _check(rec: Recording, where: EntryId | None) -> str | None:
    digest = request_digest(rec.request)
    if digest != rec.key:
        return f"key {rec.key} does not match its request (which hashes to {digest})"
    if where is not None:
        namespace, key, seq = where
        if (namespace not in (None, rec.namespace)) or key != rec.key or seq != rec.seq:
            return (
                f"stored as {_label(where)} but holds {_label((rec.namespace, rec.key, rec.seq))}"
            )
    return None


def _raw_entries(store: Store) -> Iterator[tuple[str, Callable[[], Recording], Any]]:
    """(label, decode, (namespace, key, seq) from the entry's position) for every entry."""
    if isinstance(store, LmdbStore):
        for raw_key, value in store.iter_raw(b"entries"):
            where = parse_entry_key(raw_key)

            def load(value: bytes = value) -> Recording:
                return unpack(value)

            yield _label(where), load, where
    elif isinstance(store, DirStore):
        for entry in sorted(store.files(), key=lambda e: str(e.path)):

            def read(entry: Any = entry) -> Recording:
                return store.read_file(entry)

            yield str(entry.path), read, (entry.namespace, entry.key, entry.seq)
    else:
        for rec in store.iter():

            def same(rec: Recording = rec) -> Recording:
                return rec

            yield _label((rec.namespace, rec.key, rec.seq)), same, None


# --------------------------------------------------------------------------------------------
# audit


@cache.command("audit")
@click.argument("path", required=False, type=click.Path(exists=True))
@store_option
@allow_option
@click.pass_context
def audit_command(ctx: click.Context, path: str | None, store: str, allow: tuple[str, ...]) -> None:
    """Fail (exit status 1) if anything shaped like a credential is in PATH (default: the store).

    PATH may be an LMDB store, an export directory, or any file or directory. Findings are
    printed with a fingerprint only, never the value.
    """
    target = Path(path or store)
    if not target.exists():
        raise click.ClickException(f"nothing to audit at {target}")
    try:
        report = audit(target, frozenset(allow), decoders={b"log": _log_text})
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    for leak in report.leaks:
        where = leak.place if leak.entry is None else f"{_label(leak.entry)}: {leak.place}"
        click.echo(f"{where}: {leak.finding}")
    if report.leaks:
        click.echo(
            f"audit failed: {len(report.leaks)} credential-shaped strings in {target}. Remove the "
            "recordings holding them (`llmreel cache rm KEY`), or export again to drop deleted "
            "ones; rotate any real key found. If a finding is no credential, pass "
            "--allow FINGERPRINT.",
            err=True,
        )
        ctx.exit(1)
    click.echo(f"audit passed: nothing credential-shaped in {report.scanned} in {target}")


def _log_text(value: bytes) -> bytes:
    # A log record's head is plain JSON; its bodies are compressed.
    return value + b"\n" + unpack_content(value)
