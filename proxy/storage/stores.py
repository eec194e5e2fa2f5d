"""Which kind of store a `--store` path names: the LMDB working store or an export directory.

The rule, in order:

1. a file, not a directory: an error;
2. `data.mdb` inside: LMDB (with an export marker too: an error, it is both);
3. the export marker `llmreel-export.json`, or `<namespace>/<key>.json` entries: an export;
4. missing, or empty (dotfiles such as `.gitkeep` don't count): a new LMDB store;
5. anything else: an error. llmreel will not scatter LMDB files into a directory of other things.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmreel.storage.dirstore import DirStore
from llmreel.storage.export import MARKER_FILE, parse_entry_path
from llmreel.storage.lmdbstore import LmdbStore, Store, StoreError

__all__ = ["is_export_dir", "open_store", "store_kind"]


def store_kind(path: str | os.PathLike[str]) -> str:
    """The kind of store at `path`: lmdb, export or new (missing or empty).

    Raises `StoreError` for a path that is none of them.
    """
    root = Path(path)
    if not root.exists():
        return "new"
    if not root.is_dir():
        raise StoreError(f"{root} is not a directory: --store names a directory")
    has_lmdb = (root / "data.mdb").exists()
    has_marker = (root / MARKER_FILE).exists()
    if has_lmdb and has_marker:
        raise StoreError(
            f"{root} holds both an LMDB store (data.mdb) and an export ({MARKER_FILE}). "
            f"Move one of them away: `llmreel cache export NEWDIR --store {root}` writes the "
            "LMDB's recordings to a directory of their own."
        )
    if has_lmdb:
        return "lmdb"
    if has_marker or is_export_dir(root):
        return "export"
    try:
        visible = [p.name for p in root.iterdir() if not p.name.startswith(".")]
    except OSError as exc:
        raise StoreError(f"cannot read the directory {root}: {exc}") from exc
    if not visible:
        return "new"
    shown = ", ".join(sorted(visible)[:5]) + (", ..." if len(visible) > 5 else "")
    raise StoreError(
        f"{root} is neither an LMDB store (no data.mdb) nor an llmreel export (no {MARKER_FILE}, "
        f"no <namespace>/<key>.json files); it holds {shown}. Pass --store a new or empty "
        "directory, or an export written by `llmreel cache export`."
    )


def is_export_dir(root: Path) -> bool:
    """Whether `root` has at least one `<namespace>/<key>.json` entry file."""
    try:
        for directory in root.iterdir():
            if directory.is_dir() and not directory.name.startswith("."):
                for file in directory.iterdir():
                    if parse_entry_path(directory.name, file.name) is not None:
                        return True
    except OSError:
        return False
    return False


def open_store(path: str | os.PathLike[str], *, create: bool = True) -> Store:
    """Open the store at `path`, of the kind `store_kind` finds (a new one is LMDB).

    With `create=False` a missing path is an error instead of a new, empty store.
    """
    kind = store_kind(path)
    if kind == "export":
        return DirStore(path, create=create)
    return LmdbStore(path, create=create)
