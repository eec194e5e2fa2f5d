"""The addon's options: names, types, defaults and help (the help is the user documentation).

One table, read by the mitmproxy addon (`loader.add_option`) and by the engine's `configure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from llmreel.core.modes import MODES

DEFAULT_MAX_RECORD_BYTES = 64 << 20
DEFAULT_SHARED_TIMEOUT_MS = 50
#: Recordings that pack (compressed) to more than this stay local (storage/shared.py).
DEFAULT_SHARED_MAX_BYTES = 8 << 20


class ConfigError(ValueError):
    """An option value the engine cannot use. The message starts with the option's name."""


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    typespec: Any
    default: Any
    help: str
    choices: Sequence[str] | None = None


OPTIONS: tuple[Option, ...] = (
    Option(
        "llmreel_mode", str, "auto",
        "auto: serve recordings, record what is new. record: always call upstream and "
        "overwrite. offline: serve recordings only; a miss never reaches the network. "
        "passthrough: never read or write the cache; only log and meter.",
        choices=MODES,
    ),
    Option(
        "llmreel_store", str, ".llmreel",
        "The recordings: an LMDB store directory, or an export directory (docs/recordings.md).",
    ),
    Option(
        "llmreel_namespace", str, "default",
        "Cache namespace for requests without an llmreel-namespace header.",
    ),
    Option(
        "llmreel_metrics_port", int, 0,
        "Port for Prometheus /metrics (0: off). `llmreel serve` defaults to 9464.",
    ),
    Option("llmreel_metrics_host", str, "127.0.0.1", "Address /metrics listens on."),
    Option(
        "llmreel_hosts", Sequence[str], [],
        "Extra HOST=PROVIDER mappings (e.g. llm.internal=openai, *.example.com=anthropic).",
    ),
    Option(
        "llmreel_ignore_fields", Sequence[str], [],
        "JSON body fields left out of the cache key, as dotted paths (user, metadata.run_id).",
    ),
    Option(
        "llmreel_prices", Optional[str], None,  # noqa: UP045 - mitmproxy option typespec
        "TOML or JSON file of USD-per-million-token prices for models genai-prices lacks.",
    ),
    Option(
        "llmreel_sequence", bool, False,
        "Record every occurrence of an identical request and replay them in order (per "
        "namespace); after the last recording, the last one is served again.",
    ),
    Option(
        "llmreel_scope_by_credential", bool, False,
        "Isolate the cache by a salted hash of each request's API key (a proxy shared by "
        "several teams); requests without a key share the unscoped cache.",
    ),
    Option(
        "llmreel_log_retention", str, "30d",
        "How long the exchange log keeps entries (30s, 10m, 2h, 7d; 0: forever).",
    ),
    Option(
        "llmreel_log_file", Optional[str], None,  # noqa: UP045 - mitmproxy option typespec
        "Also write one JSON object per exchange to this file (- for standard output).",
    ),
    Option("llmreel_log_bodies", bool, False, "Include request and response bodies in llmreel_log_file."),
    Option(
        "llmreel_log_embeddings", bool, True,
        "Keep the vectors of embedding calls in the exchange log, as float32 (about 6 KB per "
        "1536-dimension vector; `llmreel ui` plots them). Off: the log keeps the texts only.",
    ),
    Option(
        "llmreel_explain_misses", bool, False,
        "Also in auto mode, find the closest recording for each miss and log what differs "
        "(offline misses always are). Costs a scan of the namespace per miss.",
    ),
    Option(
        "llmreel_max_age", str, "",
        "Recordings older than this (e.g. 30d, 12h) are misses in auto mode and recorded "
        "again; offline mode serves them with a warning. Empty: no limit.",
    ),
    Option(
        "llmreel_budget_usd", str, "",
        "Stop calling upstream once this many US dollars were spent since start (priced as the "
        "metrics price it); cache hits keep working. Empty: no budget.",
    ),
    Option(
        "llmreel_replay_pace", str, "fast",
        "How replayed streams are timed: fast (all at once), original (the recorded gaps between "
        "chunks), or a factor that scales the gaps (0.5: twice as fast).",
    ),
    Option(
        "llmreel_control_port", int, -1,
        "Port of the control API on 127.0.0.1 (docs/control.md): per-test namespaces and "
        "sessions, exchanges since a marker, the run report. 0: a free port; -1: off.",
    ),
    Option(
        "llmreel_run_id", str, "",
        "Tag every logged exchange with this run id (`llmreel run` sets a fresh one); "
        "`llmreel log ls --run ID` finds them.",
    ),
    Option(
        "llmreel_max_record_bytes", int, DEFAULT_MAX_RECORD_BYTES,
        "Responses larger than this many bytes stream through to the client but are not "
        "recorded (counted in llmreel_recordings_skipped_total{reason=\"too_large\"}).",
    ),
    Option(
        "llmreel_shared", str, "",
        "A Redis or Valkey URL (redis://HOST:PORT/DB, rediss://...; a password goes in the URL) "
        "for a shared tier behind the local store: lookups go local, then Redis, then upstream; "
        "new recordings go to both; identical misses on several proxies make one upstream call "
        "(docs/shared.md). Empty: off.",
    ),
    Option(
        "llmreel_shared_timeout_ms", int, DEFAULT_SHARED_TIMEOUT_MS,
        "Timeout of each shared-tier call; past it llmreel goes on without Redis.",
    ),
    Option(
        "llmreel_shared_max_bytes", int, DEFAULT_SHARED_MAX_BYTES,
        "Recordings that pack (compressed) to more than this many bytes stay in the local store.",
    ),
    Option(
        "llmreel_otlp_endpoint", str, "",
        "Send every exchange as an OpenTelemetry GenAI span to this OTLP/HTTP receiver (a base "
        "URL such as http://127.0.0.1:4318, or its /v1/traces URL). Empty: the standard "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, else no export.",
    ),
    Option(
        "llmreel_otlp_content", bool, False,
        "Include prompts and answers in the spans (masked like the log; docs/otel.md).",
    ),
)  # fmt: skip

DEFAULTS: dict[str, Any] = {o.name: o.default for o in OPTIONS}
