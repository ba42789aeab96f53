"""The state store under real faults: a full disk while running, a damaged, deleted or read-only state
database at start. Monitoring and alerting go on, nothing is lost or corrupted, nothing is orphaned, and
what cannot be used is refused with a one-screen message, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet

from .fleet import Healer, demo_pids, fleet_config, kill_demos
from .helpers import StartDaemon, wait_until
from .test_alerting import Loopback, Receiver, loopback, static_config, webhook  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e


def _need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("mounting a small tmpfs for the full-disk test needs root")
        pytest.skip("mounting a small tmpfs for the full-disk test needs root")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: the state directory on a disk that can really fill up."""
    _need_root()
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    """Write until the disk is full (ENOSPC); returns the filler file to delete later."""
    filler = folder / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    with contextlib.suppress(OSError), filler.open("ab") as f:  # the last partial page too
        while True:
            f.write(b"\0" * 512)
            f.flush()
    return filler


def test_a_full_disk_stops_nothing_and_loses_no_notification(
    tmp_path: Path,
    small_disk: Path,
    fleet_factory: Any,
    loopback: Loopback,  # noqa: F811
    start_daemon: StartDaemon,
) -> None:
    hook = loopback.serve(Receiver())
    fleet: Fleet = fleet_factory(3)
    config, ids = static_config(tmp_path, fleet, {"audit": webhook(hook.url)})
    config["daemon"]["state_dir"] = str(small_disk / "state")
    daemon = start_daemon(config)
    filler = _fill(small_disk)

    fleet[0].mode = "fail"  # news while the disk is full
    wait_until(lambda: daemon.metrics().get("healerd_store_writable") == 0, 15, "the store to notice the full disk")
    wait_until(lambda: daemon.machines()[ids[0]]["condition"] == "down", 10, f"{ids[0]} down (checks go on)")
    runs = daemon.machines()[ids[1]]["checks"]["health"]["last_run"]
    wait_until(lambda: daemon.machines()[ids[1]]["checks"]["health"]["last_run"] > runs, 5, "checks still running")
    health = daemon.json("/healthz")
    assert health["status"] == "ok" and health["store"]["status"] == "failing", health
    status, page = daemon.get("/")
    assert status == 200 and b"The state store is failing" in page
    assert daemon.output().count("the state store is failing") == 1, "said once, not every second"

    filler.unlink()  # space again
    wait_until(lambda: daemon.metrics().get("healerd_store_writable") == 1, 15, "the store to recover")
    fleet[0].mode = "ok"  # news after the disk freed
    wait_until(lambda: daemon.service()["state"] == "optimal", 15, "optimal again")

    def delivered_types() -> list[str]:
        types = []
        for hit in hook.accepted():
            body = json.loads(hit.raw)
            types += [e["type"] for e in body.get("events", [])]
        return types

    want = {"machine.unhealthy", "machine.recovered"}
    wait_until(lambda: want <= set(delivered_types()), 20, f"deliveries of {want}", describe=hook.describe)
    store_events = daemon.events(type="store.degraded")
    assert [e["status"] for e in store_events] == ["firing", "resolved"], store_events
    assert daemon.stop() == 0
    with sqlite3.connect(small_disk / "state" / "state.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert "Traceback" not in daemon.output()


# ---------------------------------------------------------------------------------------------------------
# a state database that cannot be used at start


def _run_briefly(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "healerd", "run", "-c", str(config_path), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=config_path.parent,
    )


@pytest.fixture
def demo_fleet(tmp_path: Path, start_daemon: StartDaemon) -> Iterator[Healer]:
    """A demo fleet that came up, then healerd stopped (its machines keep running)."""
    config = fleet_config(tmp_path, _port())
    healer = Healer(start_daemon(config, wait="listening"), tmp_path, config)
    healer.wait_fleet_up()
    yield healer
    kill_demos(str(tmp_path))
    assert not demo_pids(str(tmp_path))


def _port() -> int:
    from conftest import free_port

    return free_port()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_state_database_is_refused_in_one_screen_then_moved_aside_on_request(
    demo_fleet: Healer, damage: str
) -> None:
    healer = demo_fleet
    members = healer.wait_fleet_up()
    pids = sorted(demo_pids(str(healer.tmp_path)))
    assert healer.daemon.stop() == 0
    db = healer.tmp_path / "state" / "state.db"
    if damage == "garbage":
        db.write_bytes(os.urandom(8192))
    else:
        with db.open("r+b") as f:
            f.truncate(db.stat().st_size // 3)
    for extra in ("state.db-wal", "state.db-shm"):
        (healer.tmp_path / "state" / extra).unlink(missing_ok=True)
    before = db.read_bytes()

    out = _run_briefly(healer.daemon.config_path)
    assert out.returncode == 1, out
    text = out.stdout + out.stderr
    assert "Traceback" not in text and len(text.splitlines()) <= 5, text
    assert "is damaged" in text and "--move-aside-broken-state" in text, text
    assert db.read_bytes() == before, "a damaged database must never be overwritten silently"

    from .helpers import DaemonProcess

    fresh = DaemonProcess(
        healer.daemon.config_path,
        healer.daemon.port,
        healer.tmp_path / "fresh.log",
        ("--move-aside-broken-state",),
    ).start()
    try:
        fresh.wait_listening(15)
        again = Healer(fresh, healer.tmp_path, healer.config)
        assert again.wait_fleet_up(timeout=20) == members, "the running machines were not adopted"
        assert sorted(demo_pids(str(healer.tmp_path))) == pids, "a machine was launched or lost"
        assert list((healer.tmp_path / "state").glob("state.db.broken-*")), "the damaged file was not kept"
    finally:
        fresh.stop()


def test_a_deleted_state_database_adopts_the_running_machines(demo_fleet: Healer, start_daemon: StartDaemon) -> None:
    healer = demo_fleet
    members = healer.wait_fleet_up()
    pids = sorted(demo_pids(str(healer.tmp_path)))
    assert healer.daemon.stop() == 0
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (healer.tmp_path / "state" / name).unlink(missing_ok=True)
    daemon = start_daemon(healer.config, name="healerd-after-delete", wait="listening")
    again = Healer(daemon, healer.tmp_path, healer.config)
    assert again.wait_fleet_up(timeout=20) == members, "the running machines were not adopted"
    time.sleep(2)  # the fill loop had its chance to launch around them
    assert sorted(demo_pids(str(healer.tmp_path))) == pids, "orphans: a machine was launched beside the old ones"
    assert "adopted a running machine missing from the state store" in daemon.output()


def test_a_read_only_state_directory_is_refused_in_one_screen(tmp_path: Path) -> None:
    _need_root()
    config = fleet_config(tmp_path, _port())
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(state)], check=True)
    try:
        from .helpers import write_config

        out = _run_briefly(write_config(tmp_path / "healerd.yaml", config))
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "Traceback" not in text and len(text.splitlines()) <= 5, text
    assert "must exist and be writable" in text, text
    assert shutil.which("mount")
