"""The probe's perturbations: small, named, seeded changes to a request body. Pure.

Run 0 of a probe is the request as recorded. Every later run `i` applies each chosen
perturbation with its own generator, `random.Random(f"{seed}:{i}:{name}")`, so a probe is
reproduced exactly by its seed, and adding a perturbation does not change what the others do.

- `whitespace`: in every user text, one to three edits: a space doubled, a trailing space or
  newline, a leading space.
- `case`: in every user text, the first letter of one or two words changes case.
- `order`: the few-shot examples (consecutive user/assistant pairs before the last user turn)
  are shuffled as pairs, and so is the list of tools.
- `temperature`: run i of n is sent with temperature i / (n - 1) (0.0 to 1.0), run 0 included.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Sequence
from typing import Any, Final

from llmreel.lab.bodies import example_pairs, set_temperature, tool_list, user_slots

__all__ = ["PERTURBATIONS", "parse_perturbations", "perturb"]

Json = dict[str, Any]
PERTURBATIONS: Final = ("whitespace", "case", "order", "temperature")
_WORD: Final = re.compile(r"[^\W\d_]+")


def parse_perturbations(value: str | Sequence[str]) -> tuple[str, ...]:
    """`whitespace,case` (or a list) as a tuple of known names; ValueError names the valid ones."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(dict.fromkeys(i.strip().lower() for i in items if i and i.strip()))
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise ValueError(
            f"unknown perturbation {', '.join(unknown)}: choose from {', '.join(PERTURBATIONS)}"
        )
    return names


def _whitespace(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 3)):
        spaces = [m.start() for m in re.finditer(" ", text)]
        choice = rng.choice(("double", "trail", "newline", "lead"))
        if choice == "double" and spaces:
            at = rng.choice(spaces)
            text = text[:at] + " " + text[at:]
        elif choice == "newline":
            text += "\n"
        elif choice == "lead":
            text = " " + text
        else:
            text += " "
    return text


def _case(text: str, rng: random.Random) -> str:
    words = list(_WORD.finditer(text))
    if not words:
        return text
    for m in rng.sample(words, min(len(words), rng.randint(1, 2))):
        first = text[m.start()]
        flipped = first.lower() if first.isupper() else first.upper()
        text = text[: m.start()] + flipped + text[m.start() + 1 :]
    return text


def _shuffle(items: list[Any], rng: random.Random) -> None:
    original = list(items)
    for _ in range(8):  # a permutation that changes something, when one exists
        rng.shuffle(items)
        if items != original:
            return


def _order(api: str, body: Json, rng: random.Random) -> bool:
    changed = False
    found = example_pairs(api, body)
    if found is not None:
        turns, start, count = found
        pairs = [turns[start + 2 * k : start + 2 * k + 2] for k in range(count)]
        before = list(pairs)
        _shuffle(pairs, rng)
        turns[start : start + 2 * count] = [t for pair in pairs for t in pair]
        changed = pairs != before
    tools = tool_list(api, body)
    if tools is not None and len(tools) > 1:
        before = list(tools)
        _shuffle(tools, rng)
        changed = changed or tools != before
    return changed


def perturb(
    api: str, body: Json, names: Sequence[str], *, seed: int, run: int, n: int
) -> tuple[Json, list[str]]:
    """A copy of `body` for run `run` of `n`, and the perturbations that changed something."""
    out = copy.deepcopy(body)
    applied: list[str] = []
    for name in names:
        rng = random.Random(f"{seed}:{run}:{name}")
        if name == "temperature":
            set_temperature(api, out, round(run / (n - 1), 3) if n > 1 else 0.0)
            applied.append(name)
            continue
        if run == 0:
            continue
        if name in ("whitespace", "case"):
            edit = _whitespace if name == "whitespace" else _case
            slots = user_slots(api, out)
            for slot in slots:
                slot.set(edit(slot.get(), rng))
            if slots:
                applied.append(name)
        elif name == "order" and _order(api, out, rng):
            applied.append(name)
    return out, applied
