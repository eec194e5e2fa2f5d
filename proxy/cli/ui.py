"""`llmreel ui`: the web UI for reviewing what went through the proxy, and the `--ui` option of
`serve` and `run`, which start it beside the proxy in a process of its own."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from llmreel.storage.lmdbstore import StoreError
from llmreel.ui.app import UiSettings
from llmreel.ui.server import (
    AUTH_ENV,
    DEFAULT_PORT,
    PROXY_ENV,
    UiProcess,
    check_binding,
    parse_auth,
    serve_forever,
)

__all__ = ["start_beside", "ui_command", "ui_options"]


@click.command(name="ui")
@click.option("--store", default=".llmreel", show_default=True, envvar="LLMREEL_STORE",
              show_envvar=True, help="The store whose exchange log to show.")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs --auth.")  # fmt: skip
@click.option("--port", "-p", type=click.IntRange(0, 65535), default=DEFAULT_PORT,
              show_default=True, help="Port to listen on; 0 picks a free one.")  # fmt: skip
@click.option("--auth", default=None, metavar="USER:PASS", envvar=AUTH_ENV,
              help="Require HTTP basic auth (needed for a non-loopback --host).")  # fmt: skip
@click.option("--open", "open_browser", is_flag=True, help="Open the UI in a browser.")
@click.option("--proxy", default="", metavar="URL", envvar=PROXY_ENV,
              help="The llmreel proxy playground runs go through (it must write to --store); "
              "default: one started on first use.")  # fmt: skip
@click.option("--offline", is_flag=True, default=lambda: os.environ.get("LLMREEL_MODE") == "offline",
              help="The playground never calls upstream (default when LLMREEL_MODE=offline).")  # fmt: skip
@click.option("--confdir", default="~/.mitmproxy", show_default=True,
              help="Where the mitmproxy CA lives (for the playground's HTTPS runs).")  # fmt: skip
def ui_command(store: str, host: str, port: int, auth: str | None, open_browser: bool,
               proxy: str, offline: bool, confdir: str) -> None:  # fmt: skip
    """Review agent conversations in a browser: exchanges, threads, labels.

    It reads the store's exchange log while proxies keep writing to it; the only thing it
    writes is labels. Stops on SIGINT or SIGTERM.

    \b
        llmreel ui --open
        llmreel log ls --label bad
    """
    try:
        credentials = parse_auth(auth)
        check_binding(host, credentials)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if not (Path(store) / "data.mdb").exists():
        raise click.ClickException(
            f"no llmreel store at {os.path.abspath(store)}. Pass --store (or set LLMREEL_STORE) "
            "to the directory the proxy records into, or run `llmreel serve` first."
        )
    settings = UiSettings(store=store, host=host, auth=credentials, proxy=proxy,
                          offline=offline, confdir=confdir)  # fmt: skip
    if open_browser:
        _open_when_ready(host, port)
    try:
        asyncio.run(serve_forever(settings, port))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    except (OSError, SystemExit) as exc:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            return
        raise click.ClickException(
            f"cannot listen on {host}:{port}: pick another --port ({exc})"
        ) from exc


def _open_when_ready(host: str, port: int) -> None:
    import threading
    import webbrowser

    from llmreel.ui.server import url_of

    threading.Timer(1.0, webbrowser.open, args=(url_of(host, port),)).start()


def ui_options[F: Callable[..., Any]](func: F) -> F:
    """`--ui` and `--ui-port` for `serve` and `run`."""
    func = click.option("--ui-port", type=click.IntRange(0, 65535), default=DEFAULT_PORT,
                        show_default=True, help="Port of the --ui web UI.")(func)  # fmt: skip
    return click.option("--ui", "with_ui", is_flag=True,
                        help="Also start the web UI (`llmreel ui`) on 127.0.0.1, in its own process.")(func)  # fmt: skip


def start_beside(
    store: str, with_ui: bool, port: int, *, proxy: str = "", offline: bool = False,
    confdir: str = "~/.mitmproxy",
) -> UiProcess | None:  # fmt: skip
    """Start the UI for `store` (which the proxy has opened) when asked; the caller stops it.

    Its playground goes through `proxy` (the proxy starting it), offline when that proxy is."""
    if not with_ui:
        return None
    process = UiProcess(store=store, port=port, proxy=proxy, offline=offline, confdir=confdir)
    try:
        process.start()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    return process
