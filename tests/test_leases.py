"""Single flight across processes: lock files (`llmreel.storage.leases`)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

from llmreel.storage.leases import FileFlights, lease_dir

HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from llmreel.storage.leases import FileFlights

    async def main():
        lease = await FileFlights(Path(sys.argv[1])).lead(sys.argv[2])
        print("led" if lease is not None else "followed", flush=True)
        if sys.stdin.readline().strip() == "release" and lease is not None:
            lease.release()
            print("released", flush=True)
        sys.stdin.readline()

    asyncio.run(main())
    """
)


def _holder(directory: Path, key: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory), key],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "led"
    return proc


def test_one_process_leads_a_key_and_its_death_frees_it(tmp_path: Path) -> None:
    flights = FileFlights(tmp_path / "flights")
    holder = _holder(tmp_path / "flights", "ns\x1fk\x1f0")
    try:
        assert asyncio.run(flights.lead("ns\x1fk\x1f0")) is None
        assert asyncio.run(flights.held("ns\x1fk\x1f0")) is True
        # Another key is free.
        other = asyncio.run(flights.lead("ns\x1fother\x1f0"))
        assert other is not None
        other.release()
    finally:
        holder.kill()
        holder.wait()
    assert asyncio.run(flights.held("ns\x1fk\x1f0")) is False
    lease = asyncio.run(flights.lead("ns\x1fk\x1f0"))
    assert lease is not None
    lease.release()
    lease.release()  # idempotent


def test_release_frees_the_key_for_the_next_leader(tmp_path: Path) -> None:
    flights = FileFlights(tmp_path)
    holder = _holder(tmp_path, "key")
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert asyncio.run(flights.lead("key")) is None
        holder.stdin.write("release\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        assert asyncio.run(flights.held("key")) is False
        lease = asyncio.run(flights.lead("key"))
        assert lease is not None
        assert list(tmp_path.iterdir())  # the lock file is there while held...
        lease.release()
        assert not list(tmp_path.iterdir())  # ...and removed on release
    finally:
        holder.kill()
        holder.wait()


def test_an_unusable_directory_turns_single_flight_off_instead_of_failing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    flights = FileFlights(blocker / "flights")  # a directory under a file cannot be made
    lease = asyncio.run(flights.lead("key"))
    assert lease is not None  # leads (holding nothing) so the call goes on upstream
    lease.release()
    assert asyncio.run(flights.held("key")) is False


def test_every_process_names_a_store_the_same_private_place(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "store")
    assert lease_dir(str(tmp_path / "store")) == lease_dir(str(tmp_path / "link"))
    assert lease_dir(str(tmp_path / "store")) != lease_dir(str(tmp_path / "other"))
