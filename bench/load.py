"""Throughput and latency with wrk: fixed time, capped request count, realistic POST bodies."""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from . import payloads
from .procs import HOST, ROOT

WRK = "/usr/bin/wrk"
LUA = ROOT / "bench" / "load.lua"
#: Asks the fake upstream for ~2 KB of reply text, like a real completion.
BODY_HEADER = "x-fake-body-bytes: 2000"
HIT_SET = 200


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    requests: int
    non200: int
    errors: int
    hits: int
    misses: int
    bytes_per_response: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


class Wrk:
    """Runs wrk against one port with the bench Lua script."""

    def __init__(self, workdir: Path, *, connections: int = 10, threads: int = 1) -> None:
        self.connections = connections
        self.threads = threads
        prefix, suffix = payloads.body_template()
        self.prefix_file = workdir / "body.prefix"
        self.suffix_file = workdir / "body.suffix"
        self.prefix_file.write_bytes(prefix)
        self.suffix_file.write_bytes(suffix)

    def run(self, port: int, *, mode: str, seconds: float, max_requests: int) -> WrkResult:
        """mode "unique": every prompt is new (misses); "cycle": the pre-recorded hit set."""
        per_thread = max(1, max_requests // self.threads)
        seconds = max(1, round(seconds))  # wrk takes whole seconds
        argv = [
            WRK, f"-t{self.threads}", f"-c{self.connections}", f"-d{seconds}s",
            "--timeout", "10s", "-s", str(LUA), f"http://{HOST}:{port}{payloads.PATH}", "--",
            mode, secrets.token_hex(6), str(HIT_SET), str(per_thread),
            str(self.prefix_file), str(self.suffix_file), BODY_HEADER,
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
        raw = json.loads(line.removeprefix("WRKJSON "))
        requests = int(raw["requests"])
        errors = sum(int(raw[k]) for k in raw if k.startswith("err_") and k != "err_status")
        return WrkResult(
            rps=requests / (raw["duration_us"] / 1e6),
            p50_ms=raw["p50_us"] / 1000,
            p90_ms=raw["p90_us"] / 1000,
            p99_ms=raw["p99_us"] / 1000,
            mean_ms=raw["mean_us"] / 1000,
            requests=requests,
            non200=int(raw["non200"]),
            errors=errors,
            hits=int(raw["hits"]),
            misses=int(raw["misses"]),
            bytes_per_response=raw["bytes"] / max(requests, 1),
        )
