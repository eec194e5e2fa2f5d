"""Namespaces named after tests: a pytest node id as a short, readable, filesystem-safe name.

    tests/test_agent.py::TestAgent::test_weather[paris-1]  ->  tests.test_agent.TestAgent.test_weather.paris-1

The result only holds `A-Z a-z 0-9 _ . -`, so an export directory (one folder per namespace)
shows it as it is. The mapping is deterministic and the same on every machine and xdist worker.
When characters had to be replaced, or the name was cut to `MAX_LENGTH`, a hash of the whole
node id is appended so that two tests never share a namespace by accident.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

__all__ = ["MAX_LENGTH", "namespace_for"]

#: Well under a namespace's 200 characters and a file name's 255 bytes.
MAX_LENGTH: Final = 120
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")
_HASH_CHARS: Final = 10


def namespace_for(nodeid: str) -> str:
    """The namespace of the test `nodeid` (as pytest prints it, relative to the rootdir)."""
    path, _, rest = nodeid.partition("::")
    path = path.removesuffix(".py").replace("/", ".").replace("\\", ".")
    name, _, params = rest.partition("[")
    parts = [path, *(p for p in name.split("::") if p)]
    if params:
        parts.append(params.removesuffix("]"))
    readable = ".".join(p for p in parts if p).strip(".") or "test"
    safe = _UNSAFE.sub("_", readable)
    if safe == readable and len(safe) <= MAX_LENGTH:
        return safe
    digest = hashlib.sha256(nodeid.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    return f"{safe[: MAX_LENGTH - _HASH_CHARS - 1]}-{digest}"
