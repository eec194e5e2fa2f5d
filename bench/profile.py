"""Sample a running proxy with py-spy under load, and summarise where its time goes."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from .procs import BIN

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
#: Frames every sample of an llmreel process has (its entry point): not "llmreel work".
_ENTRY_FILES = ("proxy/cli.py", "proxy/server.py")


def start(pid: int, seconds: float, out: Path, rate: int = 100) -> subprocess.Popen[bytes]:
    """Start sampling `pid` for `seconds` (non-blocking sampling: it barely slows the target)."""
    argv = [
        str(BIN / "py-spy"), "record", "--pid", str(pid), "--duration", str(round(seconds)),
        "--rate", str(rate), "--format", "raw", "--nonblocking", "--output", str(out),
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _frame(text: str) -> tuple[str, str]:
    match = _FRAME.match(text)
    if match is None:
        return text, ""
    return match["func"], match["file"]


def _is_llmreel(file: str) -> bool:
    return file.startswith(("proxy/", "addons/")) and not file.startswith(_ENTRY_FILES)


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by self and inclusive share of samples, and llmreel's share in all."""
    self_counts: Counter[tuple[str, str]] = Counter()
    incl_counts: Counter[tuple[str, str]] = Counter()
    llmreel_samples = 0
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            incl_counts[frame] += count
        if any(_is_llmreel(file) for _, file in frames):
            llmreel_samples += count
    if not total:
        return {"samples": 0}

    def share(
        counter: Counter[tuple[str, str]], only_llmreel: bool = False
    ) -> list[dict[str, Any]]:
        rows = [(k, v) for k, v in counter.most_common() if not only_llmreel or _is_llmreel(k[1])]
        return [
            {"function": func, "file": file, "share": round(v / total, 4)}
            for (func, file), v in rows[:top]
        ]

    return {
        "samples": total,
        "llmreel_code_share": round(llmreel_samples / total, 4),
        "top_self": share(self_counts),
        "top_llmreel_inclusive": share(incl_counts, only_llmreel=True),
    }
