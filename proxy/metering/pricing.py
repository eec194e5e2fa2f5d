"""The USD cost of an LLM call: genai-prices' bundled price data, user overrides on top.

Lookups are memoised per (provider, model), so pricing a response costs microseconds.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

# Only the bundled snapshot is used: genai_prices.UpdatePrices (its network refresh) is never
# started, so the proxy makes no calls of its own.
from genai_prices import data_snapshot
from genai_prices import types as gp

from llmreel.providers import Usage

__all__ = ["ModelPrice", "Pricer", "load_overrides"]


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A user's price for a model, in USD per million tokens.

    A cache rate left as None is charged at the `input` rate. Reasoning tokens are output.
    """

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None


# llmreel provider id -> genai-prices provider id. None means "match the model against every
# provider" (the host is unknown, so the model name is the only evidence).
_GENAI_PROVIDER: Final[Mapping[str, str | None]] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "google",
    "vertex": "google",
    "azure": "azure",  # genai-prices falls back to OpenAI's prices for Azure
    "groq": "groq",
    "together": "together",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "openrouter": "openrouter",
    "fireworks": "fireworks",
    "xai": "x-ai",
    "cerebras": "cerebras",
    "perplexity": "perplexity",
    "cohere": "cohere",
    "moonshotai": "moonshotai",
    "openai-compatible": None,
    "anthropic-compatible": None,
    "gemini-compatible": None,
}
# Local inference has no list price; an override ("ollama/*") can give it one, even zero.
_UNPRICED: Final = frozenset({"ollama"})

_MEMO_MAX: Final = 8192
_ROUND: Final = 12  # picodollars: hides binary-float noise such as 0.0018000000000000002


# A per-million-token rate: flat, or tiered by the call's total input tokens (genai-prices'
# threshold semantics: crossing a tier prices ALL tokens of that kind at the tier's rate).
# Tiers are stored highest start first. None means the unit is not priced separately.
_Tiers = tuple[tuple[int, float], ...]
_Rate = float | tuple[float, _Tiers] | None


def _at(rate: _Rate, total_input: int) -> float:
    if rate is None:
        return 0.0
    if isinstance(rate, float):
        return rate
    base, tiers = rate
    for start, price in tiers:
        if total_input > start:
            return price
    return base


@dataclass(frozen=True, slots=True)
class _Card:
    """A compiled price list. A None cache/reasoning rate folds those tokens into their parent
    (input/output), which is how genai-prices decomposes usage too."""

    input: _Rate
    output: _Rate
    cache_read: _Rate = None
    cache_write: _Rate = None
    reasoning: _Rate = None
    per_request: float = 0.0

    def cost(self, u: Usage) -> float:
        n = u.input
        cache_read = u.cache_read if self.cache_read is not None else 0
        cache_write = u.cache_write if self.cache_write is not None else 0
        reasoning = u.reasoning if self.reasoning is not None else 0
        # Inconsistent wire data (cache > input) must not produce a negative charge.
        plain_in = max(n - cache_read - cache_write, 0)
        plain_out = max(u.output - reasoning, 0)
        per_mtok = (
            plain_in * _at(self.input, n)
            + cache_read * _at(self.cache_read, n)
            + cache_write * _at(self.cache_write, n)
            + plain_out * _at(self.output, n)
            + reasoning * _at(self.reasoning, n)
        )
        return round(per_mtok / 1_000_000 + self.per_request, _ROUND)


def _rate(value: object) -> _Rate:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, gp.TieredPrices):
        tiers = tuple(sorted(((t.start, float(t.price)) for t in value.tiers), reverse=True))
        return (float(value.base), tiers)
    return None


def _compile(mp: gp.ModelPrice) -> _Card:
    requests = getattr(mp, "requests_kcount", None)
    return _Card(
        input=_rate(mp.input_mtok),
        output=_rate(mp.output_mtok),
        cache_read=_rate(mp.cache_read_mtok),
        cache_write=_rate(mp.cache_write_mtok),
        reasoning=_rate(getattr(mp, "output_reasoning_mtok", None)),
        per_request=float(requests) / 1000 if isinstance(requests, Decimal) else 0.0,
    )


def _override_card(price: ModelPrice) -> _Card:
    return _Card(
        input=float(price.input),
        output=float(price.output),
        cache_read=None if price.cache_read is None else float(price.cache_read),
        cache_write=None if price.cache_write is None else float(price.cache_write),
    )


class Pricer:
    """Prices calls. Thread-compatible: its memo tables only ever gain equivalent entries.

    Override keys are "provider/model" (llmreel provider id), "model" (any provider), or
    "provider/*" (every model of that provider); matched case-insensitively in that order,
    before genai-prices. Prices ignore service tiers and batch discounts (the proxy sees
    neither reliably); time-dependent prices use the call's time (`at`, default now).
    """

    __slots__ = ("_memo", "_overrides", "_timed")

    def __init__(self, overrides: Mapping[str, ModelPrice] | None = None) -> None:
        self._overrides = {
            k.strip().lower(): _override_card(v) for k, v in (overrides or {}).items()
        }
        # (provider, model) -> a fixed card, a genai model whose price depends on time, or None
        self._memo: dict[tuple[str, str | None], _Card | gp.ModelInfo | None] = {}
        self._timed: dict[int, tuple[gp.ModelPrice, _Card]] = {}

    def cost(
        self, provider: str, model: str | None, usage: Usage, *, at: datetime | None = None
    ) -> float | None:
        """USD for `usage`, or None when the price is unknown (never a made-up zero).

        Pass the model the response reports when there is one: it is the most specific name
        (a dated snapshot; for Azure, the model behind a deployment name).
        """
        key = (provider, model)
        try:
            entry = self._memo[key]
        except KeyError:
            entry = self._lookup(provider, model)
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()  # model names come from the wire: keep memory bounded
            self._memo[key] = entry
        if entry is None:
            return None
        if isinstance(entry, _Card):
            return entry.cost(usage)
        return self._timed_card(entry, at).cost(usage)

    def _timed_card(self, model: gp.ModelInfo, at: datetime | None) -> _Card:
        mp = model.get_prices(at or datetime.now(tz=UTC))
        hit = self._timed.get(id(mp))
        if hit is not None and hit[0] is mp:
            return hit[1]
        card = _compile(mp)
        self._timed[id(mp)] = (mp, card)  # holding mp keeps its id from being reused
        return card

    def _lookup(self, provider: str, model: str | None) -> _Card | gp.ModelInfo | None:
        p = provider.lower()
        m = model.strip().lower() if model else None
        if m and m.startswith("models/"):
            m = m[len("models/") :]  # Gemini resource names
        for key in ((f"{p}/{m}", m) if m else ()) + (f"{p}/*",):
            card = self._overrides.get(key)
            if card is not None:
                return card
        if not m or p in _UNPRICED:
            return None
        genai_provider = _GENAI_PROVIDER.get(p, p)
        try:
            _, info = data_snapshot.get_snapshot().find_provider_model(
                m, None, genai_provider, None
            )
        except (LookupError, ValueError):  # the model name came from the wire: never raise
            return None
        if isinstance(info.prices, gp.ModelPrice):
            return _compile(info.prices)
        return info  # conditional prices: resolved per call, by time


# --------------------------------------------------------------------------------------------
# Override files

_PRICE_FIELDS: Final = ("input", "output", "cache_read", "cache_write")


def load_overrides(path: str | os.PathLike[str]) -> dict[str, ModelPrice]:
    """Read a price override file: TOML (.toml) or JSON (.json).

    Each entry maps a key ("model", "provider/model" or "provider/*") to USD per million
    tokens; `input` and `output` are required. Entries may sit at the top level or under a
    `models` table:

        [models."gpt-4o-mini"]
        input = 0.15
        output = 0.60
        cache_read = 0.075

        [models."ollama/*"]
        input = 0
        output = 0

    Raises ValueError naming the file and the bad entry.
    """
    p = Path(path)
    raw = p.read_bytes()
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            doc: object = tomllib.loads(raw.decode("utf-8"))
        elif suffix == ".json":
            doc = json.loads(raw)
        else:
            raise ValueError(f"{p}: price overrides must be a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not valid {suffix[1:].upper()}: {e}") from e
    if not isinstance(doc, dict):
        raise ValueError(f"{p}: expected a table of models at the top level")
    if isinstance(doc.get("models"), dict) and len(doc) == 1:
        doc = doc["models"]
    assert isinstance(doc, dict)
    return {str(key): _parse_entry(p, str(key), entry) for key, entry in doc.items()}


def _parse_entry(path: Path, key: str, entry: object) -> ModelPrice:
    where = f"{path}: entry {key!r}"
    if not key.strip():
        raise ValueError(f"{path}: empty model name")
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a table like {{input = 0.15, output = 0.6}}")
    unknown = sorted(set(entry) - set(_PRICE_FIELDS))
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(_PRICE_FIELDS)} (USD per million tokens)"
        )
    values: dict[str, float | None] = {}
    for name in _PRICE_FIELDS:
        value: Any = entry.get(name)
        if value is None:
            if name in ("input", "output"):
                raise ValueError(f"{where}: missing {name!r} (USD per million tokens)")
            values[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: {name!r} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{where}: {name!r} must be a finite number >= 0, got {value!r}")
        values[name] = float(value)
    return ModelPrice(
        input=values["input"] or 0.0,
        output=values["output"] or 0.0,
        cache_read=values["cache_read"],
        cache_write=values["cache_write"],
    )
