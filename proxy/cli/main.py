"""The `llmreel` command line."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from llmreel.cli.cache import cache
from llmreel.cli.config import apply_config, config_command
from llmreel.cli.log import log as log_group
from llmreel.cli.probe import probe_command
from llmreel.cli.reverse import Reverse
from llmreel.cli.server import (
    DEFAULT_CONFDIR,
    ProxyServer,
    ProxySettings,
    Running,
    StartupError,
)
from llmreel.cli.setup import setup_logging
from llmreel.cli.sharedcopy import pull_command, push_command
from llmreel.cli.ui import start_beside, ui_command, ui_options
from llmreel.cli.verify import verify
from llmreel.cli.workers import Supervisor, worker_count
from llmreel.core.ids import new_id
from llmreel.core.modes import MODES
from llmreel.core.wire import is_loopback
from llmreel.engine.options import (
    DEFAULT_MAX_RECORD_BYTES,
    DEFAULT_SHARED_MAX_BYTES,
    DEFAULT_SHARED_TIMEOUT_MS,
)
from llmreel.metering.report import RunReport
from llmreel.providers import DEFAULT_HOSTS, parse_host_mappings

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("llmreel")


def _reverse(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[Reverse]:
    try:
        return [Reverse.parse(v) for v in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _workers(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return worker_count(str(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def proxy_options(default_port: int, default_metrics_port: int) -> Callable[[F], F]:
    """The options `serve` and `run` share."""

    def decorate(func: F) -> F:
        options = [
            click.option("--mode", type=click.Choice(MODES), default="auto", show_default=True,
                         envvar="LLMREEL_MODE", show_envvar=True,
                         help="auto: serve recordings, record what is new. record: always call "
                         "upstream, overwrite. offline: recordings only; a miss never reaches "
                         "the network. passthrough: no cache; only log and meter."),
            click.option("--host", default="127.0.0.1", show_default=True,
                         help="Address of the proxy listeners."),
            click.option("--port", "-p", type=click.IntRange(0, 65535), default=default_port,
                         show_default=True, help="Port of the regular (HTTPS_PROXY) listener; 0 picks a free one."),
            click.option("--reverse", multiple=True, callback=_reverse, metavar="URL@PORT",
                         help="A reverse-proxy listener for clients that take a base URL, e.g. "
                         "https://api.openai.com@8081. Repeatable."),
            click.option("--store", default=".llmreel", show_default=True, envvar="LLMREEL_STORE",
                         show_envvar=True, help="The recordings: an LMDB store directory, or an "
                         "export directory (docs/recordings.md)."),
            click.option("--namespace", default="default", show_default=True,
                         envvar="LLMREEL_NAMESPACE",
                         help="Cache namespace for requests without an llmreel-namespace header."),
            click.option("--metrics-port", type=click.IntRange(0, 65535),
                         default=default_metrics_port, show_default=True,
                         help="Port for Prometheus /metrics; 0 turns it off."),
            click.option("--metrics-host", default="127.0.0.1", show_default=True,
                         help="Address /metrics listens on."),
            click.option("--confdir", default=DEFAULT_CONFDIR, show_default=True,
                         help="Where the mitmproxy CA lives."),
            click.option("--ssl-insecure", is_flag=True,
                         help="Don't verify upstream certificates (self-signed local model servers)."),
            click.option("--provider-host", "hosts", multiple=True, metavar="HOST=PROVIDER",
                         help="Treat HOST as PROVIDER (openai, anthropic, gemini, ...). Repeatable."),
            click.option("--ignore-field", "ignore_fields", multiple=True, metavar="PATH",
                         help="JSON body field left out of the cache key (user, metadata.run_id). Repeatable."),
            click.option("--prices", type=click.Path(exists=True, dir_okay=False), default=None,
                         help="TOML or JSON file of per-million-token prices for extra models."),
            click.option("--scope-by-credential", is_flag=True,
                         help="Isolate the cache by a salted hash of each request's API key."),
            click.option("--log-retention", default="30d", show_default=True,
                         envvar="LLMREEL_LOG_RETENTION",
                         help="How long the exchange log keeps entries (7d, 12h; 0: forever)."),
            click.option("--log-file", default=None, metavar="PATH|-",
                         help="Also write one JSON object per exchange to PATH (- for stdout)."),
            click.option("--log-bodies", is_flag=True,
                         help="Include request and response bodies in --log-file."),
            click.option("--log-embeddings/--no-log-embeddings", default=True, show_default=True,
                         help="Keep embedding vectors in the log as float32 (~6 KB per "
                         "1536-dim vector), for `llmreel ui`'s embeddings page."),
            click.option("--explain-misses", is_flag=True,
                         help="In auto mode too, log how each miss differs from the closest recording."),
            click.option("--sequence", is_flag=True,
                         help="Record every occurrence of an identical request; replay them in order."),
            click.option("--max-age", default="", metavar="AGE",
                         help="Recordings older than AGE (30d, 12h) are recorded again in auto mode; "
                         "offline mode warns."),
            click.option("--budget-usd", default="", metavar="USD", envvar="LLMREEL_BUDGET_USD",
                         help="Refuse upstream calls once this many dollars were spent since start "
                         "(cache hits keep working). Default: no budget."),
            click.option("--replay-pace", default="fast", show_default=True, metavar="PACE",
                         help="Replayed streams: fast (at once), original (the recorded gaps "
                         "between chunks), or a factor that scales the gaps (0.5: twice as fast)."),
            click.option("--max-record-bytes", type=click.IntRange(1), default=DEFAULT_MAX_RECORD_BYTES,
                         show_default=True, metavar="BYTES",
                         help="Larger responses stream through to the client unrecorded (counted "
                         "in llmreel_recordings_skipped_total)."),
            click.option("--shared", default="", metavar="URL", envvar="LLMREEL_SHARED_URL",
                         show_envvar=True,
                         help="A Redis/Valkey URL (redis://HOST:PORT/DB, rediss://; a password "
                         "goes in the URL) shared by several proxies behind their local stores "
                         "(docs/shared.md)."),
            click.option("--shared-timeout", "shared_timeout_ms", type=click.IntRange(1),
                         default=DEFAULT_SHARED_TIMEOUT_MS, show_default=True, metavar="MS",
                         help="Timeout of each Redis call, in milliseconds; past it llmreel goes "
                         "on without Redis."),
            click.option("--shared-max-bytes", type=click.IntRange(1), default=DEFAULT_SHARED_MAX_BYTES,
                         show_default=True, metavar="BYTES",
                         help="Recordings larger than this (compressed) stay in the local store."),
            click.option("--otlp-endpoint", default="", metavar="URL",
                         help="Send each exchange as an OpenTelemetry GenAI span to this OTLP/HTTP "
                         "receiver (e.g. http://127.0.0.1:4318; docs/otel.md). Default: "
                         "OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT if set, else no export."),
            click.option("--otlp-content", is_flag=True,
                         help="Include prompts and answers in the spans (masked like the log)."),
            click.option("--proxy-auth", default=None, metavar="USER:PASS",
                         help="Require proxy authentication (needed to listen beyond loopback)."),
            click.option("--allow-remote", is_flag=True,
                         help="Allow a non-loopback --host without --proxy-auth."),
            click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
                         help="Any mitmproxy option, as with mitmdump --set. Repeatable."),
            click.option("--workers", default="1", show_default=True, metavar="N|auto",
                         envvar="LLMREEL_WORKERS", callback=_workers,
                         help="Serve with N processes sharing the port, the store and /metrics "
                         "(auto: one per core). docs/workers.md says when it helps."),
            click.option("-q", "--quiet", is_flag=True, help="Only log warnings and errors."),
            click.option("-v", "--verbose", is_flag=True, help="Log debug detail."),
        ]  # fmt: skip
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _settings(kw: dict[str, Any]) -> ProxySettings:
    setup_logging(kw["quiet"], kw["verbose"])
    allow_remote = kw.pop("allow_remote")
    for host, what in ((kw["host"], "--host"), (kw["metrics_host"], "--metrics-host")):
        if is_loopback(host):
            continue
        if what == "--host" and not (kw["proxy_auth"] or allow_remote):
            raise click.UsageError(
                f"{what} {host} would let other machines use this proxy and your API keys. "
                "Add --proxy-auth USER:PASS, or --allow-remote if the network is trusted."
            )
        log.warning("%s %s listens beyond this machine", what, host)
    return ProxySettings(**{k: v for k, v in kw.items() if k not in _NOT_SETTINGS})


#: Options of `serve` and `run` that say how to run the proxy rather than what it does.
_NOT_SETTINGS = ("quiet", "verbose", "workers")


def _server(settings: ProxySettings, kw: dict[str, Any], *, detailed: bool = False) -> Any:
    """One in-process proxy, or the supervisor of `--workers N` processes."""
    if kw["workers"] > 1:
        if settings.control_port >= 0:
            log.warning("the control API is not served with --workers > 1; it is off")
            settings.control_port = -1
        return Supervisor(settings, kw["workers"], detailed_report=detailed,
                          log_level=(kw["quiet"], kw["verbose"]))  # fmt: skip
    server = ProxyServer(settings)
    server.recorder.report.detailed = detailed
    return server


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llmreel")
@click.pass_context
def main(ctx: click.Context) -> None:
    """llmreel: record, replay, log and meter LLM API calls, for any client.

    Point a client at the proxy with HTTPS_PROXY (or a base URL in reverse mode), or wrap a
    command with `llmreel run -- CMD`. Settings can live in llmreel.toml or [tool.llmreel] in
    pyproject.toml; `llmreel config` shows them.
    """
    apply_config(ctx)  # the file's values become defaults; command-line options still win


@main.command()
@proxy_options(default_port=8080, default_metrics_port=9464)
@click.option("--control", is_flag=True,
              help="Serve the control API on 127.0.0.1 (docs/control.md): per-test namespaces "
              "for any test runner, exchanges since a marker, the run report.")  # fmt: skip
@click.option("--control-port", type=click.IntRange(0, 65535), default=9466, show_default=True,
              help="Port of the control API (0: a free one).")  # fmt: skip
@ui_options
def serve(control: bool, control_port: int, **kw: Any) -> None:
    """Run the proxy in the foreground until SIGINT or SIGTERM."""
    ui = (kw.pop("with_ui"), kw.pop("ui_port"))
    settings = _settings(kw)
    settings.control_port = control_port if control else -1
    try:
        asyncio.run(_serve(settings, ui, kw))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from exc


async def _serve(
    settings: ProxySettings, ui: tuple[bool, int] = (False, 0), kw: dict[str, Any] | None = None
) -> None:
    server = _server(settings, kw or {"workers": 1})
    running = await _start(server)
    lab = _lab(settings, running)
    ui_process = await asyncio.to_thread(start_beside, settings.store, *ui, **lab)
    click.echo(running.summary() + (f" | ui {ui_process.url}" if ui_process else ""))
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.shutdown)
    await server.wait()
    await server.stop()
    if ui_process is not None:
        await asyncio.to_thread(ui_process.stop)
    if isinstance(server, Supervisor):
        server.close_store()
        if server.failed:
            raise StartupError(server.failed)
    log.info("stopped")


async def _start(server: ProxyServer | Supervisor) -> Running:
    running = await server.start()
    if isinstance(server, ProxyServer) and server.recorder.metrics_error:
        await server.stop()
        raise StartupError(
            f"{server.recorder.metrics_error}. Pick another --metrics-port (0 turns it off)."
        )
    return running


@main.command(context_settings={"allow_interspersed_args": False})
@proxy_options(default_port=0, default_metrics_port=0)
@click.option("--fail-on-miss/--no-fail-on-miss", default=None,
              help="Exit non-zero if any request missed the cache, even if COMMAND swallowed the "
              "error. Default: on in offline mode, off otherwise.")  # fmt: skip
@click.option(
    "--fail-on-unused",
    is_flag=True,
    help="Exit non-zero if recordings in the namespaces used were never replayed, and "
    "list them (the report only counts them otherwise; -v lists them too).",
)
@click.option(
    "--control/--no-control",
    default=True,
    show_default=True,
    help="Serve the control API on a free port; COMMAND finds it in LLMREEL_CONTROL_URL.",
)
@ui_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(command: tuple[str, ...], fail_on_miss: bool | None, fail_on_unused: bool, control: bool,
        **kw: Any) -> None:  # fmt: skip
    """Run COMMAND with its LLM calls going through a fresh proxy; exit with its exit code.

    \b
        llmreel run -- pytest tests/
        llmreel run --mode offline -- python agent.py
    """
    verbose = kw["verbose"]
    ui = (kw.pop("with_ui"), kw.pop("ui_port"))
    settings = _settings(kw)
    if shutil.which(command[0]) is None and not os.path.exists(command[0]):
        raise click.ClickException(f"command not found: {command[0]}")
    settings.control_port = 0 if control else -1
    if fail_on_miss is None:
        fail_on_miss = settings.mode == "offline"
    try:
        code, report = asyncio.run(_run(settings, list(command), ui, kw))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(report.render(list_unused=fail_on_unused or verbose), err=True)
    failures = report.failures(fail_on_miss=fail_on_miss, fail_on_unused=fail_on_unused)
    if failures and code == 0:
        click.echo(f"llmreel: failing the run: {'; '.join(failures)}", err=True)
        code = 1
    sys.exit(code)


async def _run(
    settings: ProxySettings, command: list[str], ui: tuple[bool, int] = (False, 0),
    kw: dict[str, Any] | None = None,
) -> tuple[int, RunReport]:
    from llmreel.cli.clientenv import base_url_env, client_env, write_bundle

    bundle = write_bundle(settings.confdir)
    # Every exchange of this run is tagged with its id (the log, `log ls --run`, the UI).
    settings.run_id = settings.run_id or new_id()
    # A detailed report: for its unused-recordings part.
    server = _server(settings, kw or {"workers": 1}, detailed=True)
    if isinstance(server, ProxyServer):
        server.recorder.report.run_id = settings.run_id
    running = await _start(server)
    log.info("%s", running.summary())
    reverse = [
        (r, li.url) for r, li in zip(settings.reverse, _reverse_listeners(running), strict=False)
    ]
    hosts = DEFAULT_HOSTS.merged(parse_host_mappings(settings.hosts))  # valid: the proxy started
    base_urls, advice = base_url_env(reverse, hosts)
    for line in advice:
        click.echo(line, err=True)
    env = {**os.environ, **client_env(running.proxy_url, bundle, base_urls)}
    env["LLMREEL_RUN_ID"] = settings.run_id
    if running.control_url:
        env["LLMREEL_CONTROL_URL"] = running.control_url
    log.info("run id %s", settings.run_id)
    lab = _lab(settings, running)
    ui_process = await asyncio.to_thread(start_beside, settings.store, *ui, **lab)
    if ui_process is not None:
        click.echo(f"llmreel ui: {ui_process.url}threads?run={settings.run_id}", err=True)
    loop = asyncio.get_running_loop()
    try:
        proc = await asyncio.create_subprocess_exec(*command, env=env)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, functools.partial(_forward_signal, proc, sig))
        code = await proc.wait()
    finally:
        if isinstance(server, ProxyServer):
            report = server.recorder.report
            _find_unused(server.recorder.store, report)
            await server.stop()
        else:
            await server.stop()  # the workers' reports are complete once they stopped
            report = server.report
            _find_unused(server.store, report)
            server.close_store()
        if ui_process is not None:
            await asyncio.to_thread(ui_process.stop)
    # A child killed by a signal reports -N; shells report 128+N.
    return (code if code >= 0 else 128 - code), report


def _lab(settings: ProxySettings, running: Running) -> dict[str, Any]:
    """The UI's playground goes through this proxy (with its proxy auth), offline if it is."""
    url = running.proxy_url
    if settings.proxy_auth:
        from urllib.parse import quote

        user, _, password = settings.proxy_auth.partition(":")
        url = url.replace("://", f"://{quote(user, safe='')}:{quote(password, safe='')}@", 1)
    return {"proxy": url, "offline": settings.mode == "offline", "confdir": settings.confdir}


def _find_unused(store: Any, report: RunReport) -> None:
    if store is None:
        return
    store.flush(10)
    recorded = [
        (r.namespace, r.key, r.seq) for ns in sorted(report.namespaces) for r in store.iter(ns)
    ]
    report.find_unused(recorded)


def _forward_signal(proc: asyncio.subprocess.Process, sig: int) -> None:
    if proc.returncode is None:
        proc.send_signal(sig)


def _reverse_listeners(running: Running) -> list[Any]:
    return [li for li in running.listeners if li.kind == "reverse"]


@main.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address of the running proxy."
)
@click.option(
    "--port", "-p", type=int, default=8080, show_default=True, help="Its regular listener's port."
)
@click.option("--reverse", multiple=True, callback=_reverse, metavar="URL@PORT",
              help="Reverse listeners of the running proxy, for SDK base-URL variables.")  # fmt: skip
@click.option("--provider-host", "hosts", multiple=True, metavar="HOST=PROVIDER",
              help="Treat HOST as PROVIDER, as the proxy does, to pick its base-URL variable.")  # fmt: skip
@click.option(
    "--confdir", default=DEFAULT_CONFDIR, show_default=True, help="Where the mitmproxy CA lives."
)
def env(host: str, port: int, reverse: list[Reverse], hosts: tuple[str, ...], confdir: str) -> None:
    """Print `export` lines that point a shell at a running proxy.

    \b
        eval "$(llmreel env)"
    """
    from llmreel.cli.clientenv import base_url_env, client_env, export_lines, write_bundle

    try:
        host_map = DEFAULT_HOSTS.merged(parse_host_mappings(hosts))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--provider-host") from exc
    bundle = write_bundle(confdir)
    hostport = f"[{host}]" if ":" in host else host
    base_urls, advice = base_url_env(
        [(r, f"http://{hostport}:{r.port}") for r in reverse], host_map
    )
    for line in advice:
        click.echo(line, err=True)  # stderr: stdout is for `eval`
    click.echo(export_lines(client_env(f"http://{hostport}:{port}", bundle, base_urls)), nl=False)


@main.command()
@click.option(
    "--confdir", default=DEFAULT_CONFDIR, show_default=True, help="Where the mitmproxy CA lives."
)
def ca(confdir: str) -> None:
    """Create the proxy's CA if needed, print its path, and say how to trust it."""
    from llmreel.cli.clientenv import ensure_ca, write_bundle

    cert = ensure_ca(confdir)
    bundle = write_bundle(confdir)
    click.echo(str(cert))
    click.echo(
        f"""
To trust it:
  one process (Python, curl, Node):  `llmreel run -- CMD` sets this up, or
      export SSL_CERT_FILE={bundle} REQUESTS_CA_BUNDLE={bundle} \\
             CURL_CA_BUNDLE={bundle} NODE_EXTRA_CA_CERTS={bundle}
    ({bundle.name} is the system roots plus this CA, so other HTTPS keeps working.)
  Debian/Ubuntu, system-wide:
      sudo cp {cert} /usr/local/share/ca-certificates/llmreel-mitmproxy.crt && sudo update-ca-certificates
  macOS, system-wide:
      sudo security add-trusted-cert -d -p ssl -k /Library/Keychains/System.keychain {cert}
The CA's private key is {cert.parent / "mitmproxy-ca.pem"}: keep it private.""",
        err=False,
    )


main.add_command(cache)
cache.add_command(push_command)
cache.add_command(pull_command)
main.add_command(log_group)
main.add_command(config_command)
main.add_command(verify)
main.add_command(ui_command)
main.add_command(probe_command)


@main.command("addon-path")
def addon_path() -> None:
    """Print the path of the mitmproxy addon, for plain mitmproxy tools.

    \b
        mitmdump -s "$(llmreel addon-path)" --set llmreel_store=.llmreel
    """
    import importlib.util

    spec = importlib.util.find_spec("llmreel.addons.recorder")
    if spec is None or spec.origin is None:
        raise click.ClickException("the llmreel addon is not installed; reinstall llmreel")
    click.echo(str(Path(spec.origin).resolve()))


if __name__ == "__main__":
    main()
