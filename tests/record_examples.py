"""Record the example's recordings again, from the fake upstream instead of OpenAI.

    uv run python tests/record_examples.py

The committed recordings under examples/weather_agent/recordings are keyed to api.openai.com,
as a user's would be, but come from tests/fakeupstream.py so that nobody needs an API key to
refresh them: this script runs the example's suite in record mode, in this process, with
api.openai.com resolved to the fake upstream (and upstream certificates not checked).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "weather_agent"
sys.path.insert(0, str(REPO))

from llmreel.storage.dirstore import DirStore  # noqa: E402
from tests.fakeupstream import FakeUpstream  # noqa: E402


def main() -> int:
    with FakeUpstream(tls=True) as fake:
        real_getaddrinfo = socket.getaddrinfo

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host == "api.openai.com":
                return real_getaddrinfo("127.0.0.1", fake.port, *args, **kwargs)
            return real_getaddrinfo(host, port, *args, **kwargs)

        socket.getaddrinfo = getaddrinfo
        config = EXAMPLE / "record-with-fake.toml"
        config.write_text('llmreel = "record"\nstore = "recordings"\nssl-insecure = true\n')
        os.environ.update(LLMREEL_CONFIG=str(config), OPENAI_API_KEY="sk-fake-0000000000000000")
        os.environ.pop("OPENAI_BASE_URL", None)
        shutil.rmtree(EXAMPLE / "recordings", ignore_errors=True)  # no stale recordings left
        DirStore(EXAMPLE / "recordings").close()  # an export directory, not an LMDB store
        os.chdir(EXAMPLE)
        try:
            return int(pytest.main(["-q"]))
        finally:
            config.unlink()
            socket.getaddrinfo = real_getaddrinfo


if __name__ == "__main__":
    sys.exit(main())
