"""Helpers for testing the Grafana dashboards in dashboards/.

`dashboard_queries(path)` returns every PromQL expression of a dashboard with Grafana's variables
replaced by concrete values, ready to send to a real Prometheus. `METRICS` is the catalogue of
metric families llmreel exports (name -> kind and label names), and `selectors(expr)` /
`grouping_labels(expr)` are a small PromQL scanner, enough to check which series and labels an
expression refers to (it does not validate syntax: promtool or Prometheus does that).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = REPO / "dashboards"

# Values substituted for Grafana variables. `${datasource}` never appears in an expression (it
# only names the datasource uid); `$__interval` and friends are included so that a future panel
# using them still yields a runnable query.
GRAFANA_TEST_VALUES: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__interval_ms": "60000",
    "provider": ".*",
    "model": ".*",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")

# ---------------------------------------------------------------------------------------------
# The metrics llmreel exports: exposed family name -> (kind, label names). Counters are listed
# by their exposed `_total` name; histograms by their base name (exposed as _bucket/_sum/_count).
# ---------------------------------------------------------------------------------------------
_GEN_AI = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")


@dataclass(frozen=True)
class MetricFamily:
    kind: str  # "counter", "gauge" or "histogram"
    labels: frozenset[str]


def _fam(kind: str, *labels: str) -> MetricFamily:
    return MetricFamily(kind, frozenset(labels))


METRICS: dict[str, MetricFamily] = {
    "llmreel_requests_total": _fam(
        "counter", "provider", "model", "operation", "cache", "status_class"
    ),
    "llmreel_tokens_total": _fam("counter", "provider", "model", "type"),
    "llmreel_cost_usd_total": _fam("counter", "provider", "model"),
    "llmreel_saved_tokens_total": _fam("counter", "provider", "model", "type"),
    "llmreel_saved_cost_usd_total": _fam("counter", "provider", "model"),
    "llmreel_unpriced_requests_total": _fam("counter", "provider", "model"),
    "llmreel_upstream_errors_total": _fam("counter", "provider", "error_type"),
    "llmreel_store_write_errors_total": _fam("counter", "reason"),
    "llmreel_recordings_skipped_total": _fam("counter", "reason"),
    "llmreel_spend_usd": _fam("gauge"),
    "llmreel_budget_usd": _fam("gauge"),
    "llmreel_budget_refusals_total": _fam("counter"),
    "llmreel_store_size_bytes": _fam("gauge"),
    "llmreel_store_entries": _fam("gauge"),
    "llmreel_otlp_spans_exported_total": _fam("counter"),
    "llmreel_otlp_spans_failed_total": _fam("counter"),
    "llmreel_otlp_spans_dropped_total": _fam("counter"),
    "llmreel_build_info": _fam("gauge", "version"),
    "llmreel_workers": _fam("gauge"),
    "llmreel_worker_restarts_total": _fam("counter"),
    "gen_ai_client_operation_duration_seconds": _fam("histogram", *_GEN_AI, "error_type"),
    "gen_ai_client_token_usage": _fam("histogram", *_GEN_AI, "gen_ai_token_type"),
    "gen_ai_client_operation_time_to_first_chunk_seconds": _fam("histogram", *_GEN_AI),
    "llmreel_upstream_duration_seconds": _fam("histogram", "provider"),
    "llmreel_overhead_seconds": _fam("histogram", "cache"),
    "llmreel_shared_hits_total": _fam("counter"),
    "llmreel_shared_misses_total": _fam("counter"),
    "llmreel_shared_writes_total": _fam("counter"),
    "llmreel_shared_errors_total": _fam("counter", "reason"),
    "llmreel_shared_seconds": _fam("histogram", "op"),
}

# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})


def series_names() -> dict[str, frozenset[str]]:
    """Every series name a query may use -> its label names (histograms' `_bucket` adds `le`)."""
    out: dict[str, frozenset[str]] = {}
    for name, fam in METRICS.items():
        if fam.kind == "histogram":
            out[name + "_bucket"] = fam.labels | {"le"}
            out[name + "_sum"] = fam.labels
            out[name + "_count"] = fam.labels
        else:
            out[name] = fam.labels
    return out


# ---------------------------------------------------------------------------------------------
# Dashboard walking and variable substitution
# ---------------------------------------------------------------------------------------------
def load_dashboard(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """All panels, including those nested in (collapsed) rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def iter_targets(dashboard: Mapping[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query target of every panel."""
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def substitute(expr: str, values: Mapping[str, str] | None = None) -> str:
    """Replace `$var`, `${var}`, `${var:fmt}` and `[[var]]` with concrete values.

    Raises KeyError for a variable that has no value, so an expression using a variable this
    module does not know about fails loudly instead of reaching Prometheus half-substituted.
    """
    vals = GRAFANA_TEST_VALUES if values is None else values

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in vals:
            raise KeyError(f"no test value for Grafana variable ${name} in {expr!r}")
        return vals[name]

    return _VARIABLE.sub(repl, expr)


def dashboard_queries(path: str | Path, values: Mapping[str, str] | None = None) -> list[str]:
    """Every `targets[].expr` of the dashboard at `path`, Grafana variables substituted."""
    dashboard = load_dashboard(path)
    return [substitute(t["expr"], values) for _, t in iter_targets(dashboard) if t.get("expr")]


# ---------------------------------------------------------------------------------------------
# A small PromQL scanner
# ---------------------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+|\[\[\w+(?::[^\]]*)?\]\])
  | (?P<num>(?:0[xX][0-9a-fA-F]+|[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+)[a-zA-Z0-9]*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]@])
    """,
    re.VERBOSE,
)

AGGREGATIONS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "limitk", "limit_ratio",
})  # fmt: skip
GROUPING_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})


@dataclass
class Selector:
    metric: str | None
    matchers: list[tuple[str, str, str]]  # (label, op, value without quotes)

    def matcher(self, label: str) -> tuple[str, str] | None:
        for name, op, value in self.matchers:
            if name == label:
                return op, value
        return None


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot tokenize {expr!r} at {pos}: {expr[pos : pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            tokens.append((kind, m.group()))
    return tokens


def _unquote(s: str) -> str:
    return s[1:-1]


def _scan(expr: str) -> tuple[list[Selector], list[tuple[str, list[str]]]]:
    toks = tokenize(expr)
    selectors: list[Selector] = []
    groupings: list[tuple[str, list[str]]] = []
    i, n = 0, len(toks)

    def matchers_at(j: int) -> tuple[list[tuple[str, str, str]], int]:
        # toks[j] is "{"; returns matchers and the index after the closing "}".
        out: list[tuple[str, str, str]] = []
        j += 1
        while j < n and toks[j][1] != "}":
            if toks[j][1] == ",":
                j += 1
                continue
            label, op, value = toks[j][1], toks[j + 1][1], toks[j + 2]
            if value[0] != "str":
                raise ValueError(f"label matcher value is not a string in {expr!r}")
            out.append((label, op, _unquote(value[1])))
            j += 3
        if j >= n:
            raise ValueError(f"unclosed '{{' in {expr!r}")
        return out, j + 1

    while i < n:
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < n else None
        if text == "{":
            matchers, i = matchers_at(i)
            selectors.append(Selector(None, matchers))
            continue
        if text == "[":  # range or subquery: skip to the matching "]"
            while i < n and toks[i][1] != "]":
                i += 1
            i += 1
            continue
        if kind == "ident":
            low = text.lower()
            if low in GROUPING_KEYWORDS:
                labels: list[str] = []
                if nxt == "(":
                    i += 2
                    while i < n and toks[i][1] != ")":
                        if toks[i][0] == "ident":
                            labels.append(toks[i][1])
                        i += 1
                groupings.append((low, labels))
                i += 1
                continue
            if low in KEYWORDS:
                i += 2 if low == "offset" else 1
                continue
            if nxt == "(" or text in AGGREGATIONS:  # function call or aggregation operator
                i += 1
                continue
            # A metric name, maybe with matchers.
            if nxt == "{":
                matchers, i = matchers_at(i + 1)
            else:
                matchers, i = [], i + 1
            selectors.append(Selector(text, matchers))
            continue
        i += 1
    return selectors, groupings


def selectors(expr: str) -> list[Selector]:
    """The instant/range vector selectors of a PromQL expression, in order."""
    return _scan(expr)[0]


def grouping_labels(expr: str) -> list[tuple[str, list[str]]]:
    """Every `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` clause and its labels."""
    return _scan(expr)[1]


def range_windows(expr: str) -> list[str]:
    """The contents of every `[...]` in the expression (range windows and subqueries)."""
    return re.findall(r"\[([^\]]*)\]", re.sub(r"\[\[\w+(?::[^\]]*)?\]\]", "", expr))
