"""Exchange ids: ULIDs, 26 characters that sort by creation time. Pure."""

from __future__ import annotations

import random
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(now: float | None = None, entropy: bytes | None = None) -> str:
    """A ULID: 48-bit millisecond clock, then 80 random bits."""
    millis = int((time.time() if now is None else now) * 1000)
    # Ids need uniqueness, not secrecy: the Mersenne Twister (seeded from os.urandom) is enough
    # and skips a system call per exchange.
    randomness = int.from_bytes(entropy, "big") if entropy else random.getrandbits(80)
    value = (millis << 80) | randomness
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))
