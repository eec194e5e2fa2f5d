"""Run the project's fake LLM upstream (plain HTTP) in its own process, for load tests.

`tests/fakeupstream.py` keeps every request it served, for assertions; under load that list
would grow without bound, so this runner clears it every second. Stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from tests.fakeupstream import FakeUpstream


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with FakeUpstream(tls=False, port=args.port) as upstream:
        print(f"fake upstream on {upstream.url}", file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            upstream.reset()
    return 0


if __name__ == "__main__":
    sys.exit(main())
