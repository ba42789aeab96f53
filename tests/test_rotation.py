"""The file rotation (healerd.rotations.file.FileRotation): the in-service set as a Prometheus file_sd JSON file.

A load balancer or Prometheus reads this file at any moment: it must always be valid JSON in file_sd shape,
replaced atomically (never seen half-written), and every call must be idempotent (a step re-run after a
crash leaves it exactly as one run would).
"""

from __future__ import annotations

import asyncio
import json
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from healerd.machines import Lifecycle, Machine
from healerd.plugins import ROTATION_KINDS
from healerd.rotations.base import NoRotation
from healerd.rotations.file import FileRotation, FileRotationOptions


def machine(i: int, service: str = "web") -> Machine:
    return Machine(service, f"{service}-{i:03d}", f"127.0.0.1:{20000 + i}", Lifecycle.IN_SERVICE, {"port": str(i)})


def rotation(tmp_path: Path, path: Path | None = None) -> FileRotation:
    return FileRotation("web", FileRotationOptions(path=path), state_dir=tmp_path / "state")


def file_sd(path: Path) -> list[dict[str, Any]]:
    """Parse the file and check it is exactly Prometheus file_sd: a list of {targets: [str], labels: {str: str}}."""
    groups = json.loads(path.read_text())
    assert isinstance(groups, list)
    for g in groups:
        assert set(g) == {"targets", "labels"}, g
        assert isinstance(g["targets"], list) and g["targets"], g
        assert all(isinstance(t, str) for t in g["targets"]), g
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in g["labels"].items()), g
    return groups


def members(path: Path) -> dict[str, str]:
    return {g["labels"]["machine"]: g["targets"][0] for g in file_sd(path)}


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def fingerprint(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def test_registered_kinds() -> None:
    assert ROTATION_KINDS.get("file") is FileRotation
    assert ROTATION_KINDS.get("none") is NoRotation


async def test_default_path_is_in_the_state_dir(tmp_path: Path) -> None:
    r = rotation(tmp_path)
    assert r.path == tmp_path / "state" / "rotation-web.json"
    await r.add(machine(1))
    assert members(r.path) == {"web-001": "127.0.0.1:20001"}


async def test_file_is_prometheus_file_sd_one_group_per_machine_sorted(tmp_path: Path) -> None:
    path = tmp_path / "sd" / "web.json"  # its folder is created
    r = rotation(tmp_path, path)
    for i in (3, 1, 2):
        await r.add(machine(i))
    assert file_sd(path) == [
        {"targets": ["127.0.0.1:20001"], "labels": {"service": "web", "machine": "web-001"}},
        {"targets": ["127.0.0.1:20002"], "labels": {"service": "web", "machine": "web-002"}},
        {"targets": ["127.0.0.1:20003"], "labels": {"service": "web", "machine": "web-003"}},
    ]
    assert await r.addresses() == ["127.0.0.1:20001", "127.0.0.1:20002", "127.0.0.1:20003"]
    assert await r.members() == members(path)
    # readable by a load balancer or Prometheus running as another user
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_text().endswith("\n")


async def test_add_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "web.json"
    r = rotation(tmp_path, path)
    await r.add(machine(1))
    before = fingerprint(path)
    await r.add(machine(1))
    await r.add(machine(1))
    assert members(path) == {"web-001": "127.0.0.1:20001"}
    assert fingerprint(path) == before, "adding a member again must not rewrite the file"


async def test_add_with_a_new_address_updates_the_machine(tmp_path: Path) -> None:
    path = tmp_path / "web.json"
    r = rotation(tmp_path, path)
    await r.add(machine(1))
    moved = Machine("web", "web-001", "127.0.0.1:29999", Lifecycle.IN_SERVICE)
    await r.add(moved)
    assert members(path) == {"web-001": "127.0.0.1:29999"}


async def test_remove_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "web.json"
    r = rotation(tmp_path, path)
    for i in (1, 2):
        await r.add(machine(i))
    await r.remove(machine(1))
    assert members(path) == {"web-002": "127.0.0.1:20002"}
    before = fingerprint(path)
    await r.remove(machine(1))
    await r.remove(machine(7))  # never there
    assert fingerprint(path) == before, "removing a non-member must not rewrite the file"
    await r.remove(machine(2))
    assert file_sd(path) == [], "an empty rotation is an empty target list, not a missing file"


async def test_remove_before_anything_was_added_writes_an_empty_rotation(tmp_path: Path) -> None:
    path = tmp_path / "web.json"
    await rotation(tmp_path, path).remove(machine(1))
    assert file_sd(path) == []


async def test_sync_makes_the_rotation_exactly_the_given_machines(tmp_path: Path) -> None:
    path = tmp_path / "web.json"
    r = rotation(tmp_path, path)
    for i in (1, 2, 3):
        await r.add(machine(i))
    await r.sync([machine(2), machine(4)])
    assert members(path) == {"web-002": "127.0.0.1:20002", "web-004": "127.0.0.1:20004"}
    before = fingerprint(path)
    await r.sync([machine(4), machine(2)])
    assert fingerprint(path) == before, "a sync to the same set must not rewrite the file"
    await r.sync([])
    assert file_sd(path) == []


async def test_sync_leaves_a_leaving_machine_where_its_step_left_it(tmp_path: Path) -> None:
    """At start, after a crash: a machine being remediated stays out if its rotation.remove already ran, and
    stays in (for the resumed step to drain and remove) if it had not."""
    path = tmp_path / "web.json"
    r = rotation(tmp_path, path)
    for i in (1, 2, 3):
        await r.add(machine(i))
    await r.remove(machine(1))  # its playbook took it out before the crash
    await r.sync([machine(3)], leaving=[machine(1), machine(2)])
    assert members(path) == {"web-002": "127.0.0.1:20002", "web-003": "127.0.0.1:20003"}
    await r.sync([machine(3)])  # no longer leaving (quarantined: not in service): out
    assert members(path) == {"web-003": "127.0.0.1:20003"}


async def test_sync_writes_the_file_when_it_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "web.json"
    r = rotation(tmp_path, path)
    await r.sync([])
    assert file_sd(path) == []
    path.unlink()
    await r.sync([])
    assert file_sd(path) == []


async def test_a_new_instance_continues_from_the_file(tmp_path: Path) -> None:
    """After a restart, the rotation is what the file says (it is the only state)."""
    path = tmp_path / "web.json"
    await rotation(tmp_path, path).add(machine(1))
    again = rotation(tmp_path, path)
    await again.add(machine(2))
    assert members(path) == {"web-001": "127.0.0.1:20001", "web-002": "127.0.0.1:20002"}


async def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "web.json"
    r = rotation(tmp_path, path)
    await asyncio.gather(*(r.add(machine(i)) for i in range(40)))
    assert len(members(path)) == 40
    await asyncio.gather(*(r.remove(machine(i)) for i in range(0, 40, 2)))
    assert sorted(members(path)) == [f"web-{i:03d}" for i in range(1, 40, 2)]


async def test_a_corrupt_file_is_reported_with_its_path_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "web.json"
    path.write_text('[{"targets": ["127.0.0.1:1"')
    r = rotation(tmp_path, path)
    with pytest.raises(RuntimeError, match=r"rotation file .*web\.json is unreadable.*fix or delete it"):
        await r.add(machine(1))
    assert path.read_text() == '[{"targets": ["127.0.0.1:1"'


async def test_no_temporary_file_is_left_behind(tmp_path: Path) -> None:
    path = tmp_path / "web.json"
    r = rotation(tmp_path, path)
    for i in range(20):
        await r.add(machine(i))
        await r.remove(machine(i - 1))
    assert listing(tmp_path) == ["web.json"]


async def test_a_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    """A reader parsing the file in a tight loop while 200 updates replace it always gets valid file_sd."""
    path = tmp_path / "web.json"
    r = rotation(tmp_path, path)
    await r.sync([machine(i) for i in range(50)])  # big enough that a write takes more than one syscall
    stop = threading.Event()
    seen: list[int] = []
    bad: list[str] = []

    def reader() -> None:
        deadline = time.monotonic() + 30  # bounded, whatever happens to the writer
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                text = path.read_text()
            except FileNotFoundError:
                bad.append("the file disappeared")
                continue
            try:
                groups = json.loads(text)
                assert isinstance(groups, list)
                assert all(g["targets"] and g["labels"]["service"] == "web" for g in groups)
            except (ValueError, AssertionError, KeyError, TypeError) as exc:
                bad.append(f"{type(exc).__name__}: {text[-80:]!r}")
                continue
            seen.append(len(groups))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for n in range(200):
            if n % 2:
                await r.remove(machine(n % 50))
            else:
                await r.add(machine(50 + n))
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert bad == [], f"{len(bad)} bad reads out of {len(bad) + len(seen)}, e.g. {bad[:3]}"
    assert len(seen) > 200, "the reader must actually have raced the writer"
    assert len(set(seen)) > 10, "the reader saw the file change many times"
    expected = {machine(i).id for i in range(50) if i % 2 == 0} | {machine(50 + n).id for n in range(0, 200, 2)}
    assert set(members(path)) == expected


async def test_no_rotation_does_nothing(tmp_path: Path) -> None:
    r = NoRotation("web", NoRotation.Config(), state_dir=tmp_path)
    await r.add(machine(1))
    await r.remove(machine(1))
    await r.sync([machine(2)])
    assert await r.addresses() == []
    assert listing(tmp_path) == []
