"""The rotation's comparison with a load balancer that forgets (healerd.remediation.reconcilers.RotationReconciler),
driven through the engine of tests/remediation_rig.py with an explicit `now`: what it puts back and takes out,
how often it looks, what it says and shows (healerd_rotation_up, the faults) while the load balancer fails and
once it answers again, and stop().

The load balancer here is the real `file` rotation made to reconcile, as HAProxy does: what a pass finds
different from healerd's rotation is written again and reported as a repair.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from collections.abc import Sequence
from typing import Any

from remediation_rig import Rig

from healerd.events import EventType
from healerd.machines import Lifecycle, Machine
from healerd.providers.base import ProviderError
from healerd.rotations.file import FileRotation

Logs = list[dict[str, Any]]
FAILS = "the load balancer fails; monitoring goes on, healerd tries again every check interval"
ANSWERS = "the load balancer answers again"


class ForgetfulFile(FileRotation):
    """The `file` rotation as a load balancer that forgets: compared every check interval, the members it lost
    put back and the ones it should not have taken out. `error` makes the comparison raise; `hold` keeps it
    waiting (a load balancer that does not answer)."""

    reconciles = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error: BaseException | None = None
        self.hold: asyncio.Event | None = None
        self.compared = 0

    async def reconcile(self, machines: list[Machine], leaving: Sequence[Machine] = ()) -> list[str]:
        self.compared += 1
        if self.hold is not None:
            await self.hold.wait()
        if self.error is not None:
            raise self.error
        before = await self.members()
        await self.sync(machines, leaving)
        after = await self.members()
        return [f"{mid} put back" for mid in sorted(set(after) - set(before))] + [
            f"{mid} taken out" for mid in sorted(set(before) - set(after))
        ]


def said(logs: Logs, event: str) -> Logs:
    return [e for e in logs if e["event"] == event]


async def forgetful_rig(rig_factory: Any, *ids: str) -> tuple[Rig, ForgetfulFile]:
    rig: Rig = await rig_factory()
    current = rig.engine.fleet.rotations["web"]
    lb = ForgetfulFile("web", current.options, state_dir=rig.tmp_path)
    rig.engine.fleet.rotations["web"] = lb
    for i, m in enumerate(ids):
        await rig.add(m, launched_at=str(rig.t0 - 100 + i))
    rig.up(*ids)
    return rig, lb


async def rotation_pass(rig: Rig, now: float) -> float:
    """The rotation reconciler's turn at `now`, and the comparison it starts in the background."""
    next_at = await rig.engine.rotation_passes.reconcile(rig.service, now)
    await asyncio.gather(*rig.engine.rotation_passes.running)
    return next_at


def write_members(rig: Rig, members: dict[str, str]) -> None:
    """What the load balancer has now, as if it had restarted with another list."""
    groups = [{"targets": [a], "labels": {"service": "web", "machine": m}} for m, a in members.items()]
    (rig.tmp_path / "rotation.json").write_text(json.dumps(groups))


async def test_what_the_load_balancer_lost_is_put_back_and_what_it_should_not_serve_taken_out(
    rig_factory: Any, logs: Logs
) -> None:
    rig, _ = await forgetful_rig(rig_factory, "web-0", "web-1", "web-2", "web-3")
    await rig.monitor.put_machine(
        Machine("web", "web-3", "127.0.0.1:20003", Lifecycle.QUARANTINED, {"incident": "probation"})
    )
    write_members(rig, {"web-0": "127.0.0.1:20000", "web-3": "127.0.0.1:20003", "stranger": "10.0.0.9:80"})

    await rotation_pass(rig, rig.t0)

    assert rig.rotation() == {"web-0", "web-1", "web-2"}
    repairs = [e.details["repair"] for e in rig.of(EventType.ROTATION_REPAIRED)]
    assert repairs == ["web-1 put back", "web-2 put back", "stranger taken out", "web-3 taken out"]
    assert all(e.service == "web" and e.details["rotation"] == "file" for e in rig.of(EventType.ROTATION_REPAIRED))
    assert rig.sample("healerd_rotation_repairs_total", service="web") == 4.0
    assert rig.sample("healerd_rotation_up", service="web") == 1.0
    assert [e["repair"] for e in said(logs, "rotation repaired")] == repairs

    await rotation_pass(rig, rig.t0 + 1)  # nothing lost since: nothing to say
    assert len(rig.of(EventType.ROTATION_REPAIRED)) == 4
    assert rig.sample("healerd_rotation_repairs_total", service="web") == 4.0


async def test_a_machine_on_its_way_out_is_neither_put_back_nor_cut(rig_factory: Any) -> None:
    """A machine being retired is drained by what retires it: the comparison leaves it where it is."""
    rig, _ = await forgetful_rig(rig_factory, "web-0", "web-1", "web-2")
    await rig.monitor.put_machine(
        Machine("web", "web-2", "127.0.0.1:20002", Lifecycle.IN_SERVICE, {"retiring": str(rig.t0)})
    )
    await rotation_pass(rig, rig.t0)
    assert rig.rotation() == {"web-0", "web-1", "web-2"}  # still draining: not cut

    write_members(rig, {"web-0": "127.0.0.1:20000"})  # the load balancer forgot web-1 and web-2
    await rotation_pass(rig, rig.t0 + 1)
    assert rig.rotation() == {"web-0", "web-1"}  # web-1 back; the leaving web-2 is not put back
    assert [e.details["repair"] for e in rig.of(EventType.ROTATION_REPAIRED)] == ["web-1 put back"]


async def test_it_compares_once_per_check_interval_and_one_pass_at_a_time(rig_factory: Any) -> None:
    rig, lb = await forgetful_rig(rig_factory, "web-0", "web-1")
    passes = rig.engine.rotation_passes
    lb.hold = asyncio.Event()  # the load balancer does not answer

    assert await passes.reconcile(rig.service, rig.t0) == rig.t0 + 1  # the check interval of the rig: 1 s
    assert await passes.reconcile(rig.service, rig.t0 + 0.5) == rig.t0 + 1  # not due yet
    assert await passes.reconcile(rig.service, rig.t0 + 1) == rig.t0 + 2
    await asyncio.sleep(0)
    assert len(passes.running) == 1 and lb.compared == 1  # a silent load balancer: no second pass piled on

    # meanwhile the rest of remediation goes on
    rig.down("web-0")
    await rig.engine.reconcile(rig.t0 + 2)
    assert [i.machine for i in rig.engine.book.active.values()] == ["web-0"]

    lb.hold.set()
    await asyncio.gather(*passes.running)
    await rotation_pass(rig, rig.t0 + 3)
    assert lb.compared == 2


async def test_a_failing_load_balancer_is_said_once_shown_and_tried_again_until_it_answers(
    rig_factory: Any, logs: Logs
) -> None:
    rig, lb = await forgetful_rig(rig_factory, "web-0", "web-1", "web-2")
    lb.error = ProviderError("load balancer 10.0.0.1: connection refused")
    write_members(rig, {"web-0": "127.0.0.1:20000"})
    for tick in range(4):
        assert await rotation_pass(rig, rig.t0 + tick) == rig.t0 + tick + 1

    assert lb.compared == 4
    assert rig.sample("healerd_rotation_up", service="web") == 0.0
    assert rig.engine.fleet.rotation_faults == {"web": "load balancer 10.0.0.1: connection refused"}
    (failing,) = said(logs, FAILS)
    assert (failing["service"], failing["error"]) == ("web", "load balancer 10.0.0.1: connection refused")
    assert not [e for e in logs if e.get("exc_info")]  # the world's error, not a bug: no traceback
    assert rig.rotation() == {"web-0"}  # nothing applied while it fails

    lb.error = None
    await rotation_pass(rig, rig.t0 + 4)
    await rotation_pass(rig, rig.t0 + 5)
    assert rig.rotation() == {"web-0", "web-1", "web-2"}  # what it missed meanwhile is applied
    assert rig.sample("healerd_rotation_up", service="web") == 1.0
    assert rig.engine.fleet.rotation_faults == {}
    assert len(said(logs, ANSWERS)) == 1 and len(said(logs, FAILS)) == 1


async def test_an_unwritable_rotation_file_is_reported_once_with_its_traceback_then_rewritten(
    rig_factory: Any, logs: Logs
) -> None:
    rig, _ = await forgetful_rig(rig_factory, "web-0", "web-1")
    path = rig.tmp_path / "rotation.json"
    path.unlink()
    path.mkdir()  # something took the file's place: it can be neither read nor replaced
    for tick in range(3):
        await rotation_pass(rig, rig.t0 + tick)

    assert rig.sample("healerd_rotation_up", service="web") == 0.0
    fault = rig.engine.fleet.rotation_faults["web"]
    assert fault.startswith("RuntimeError: rotation file") and "fix or delete it" in fault, fault
    traced = [e for e in logs if e.get("exc_info")]
    assert [e["event"] for e in traced] == ["comparing the rotation with the load balancer failed"]
    assert len(said(logs, FAILS)) == 1

    shutil.rmtree(path)
    await rotation_pass(rig, rig.t0 + 3)
    assert rig.rotation() == {"web-0", "web-1"}
    assert rig.sample("healerd_rotation_up", service="web") == 1.0
    assert rig.engine.fleet.rotation_faults == {} and len(said(logs, ANSWERS)) == 1


async def test_a_rotation_that_does_not_forget_is_never_compared(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    await rig.add("web-0")
    (rig.tmp_path / "rotation.json").unlink()  # the plain file rotation: healerd writes it on each change only
    assert await rig.engine.rotation_passes.reconcile(rig.service, rig.t0) == math.inf
    assert rig.engine.rotation_passes.running == []
    assert rig.rotation() == set()  # not compared, so not rewritten


async def test_stop_cancels_a_pass_that_hangs_and_forgets_the_faults(rig_factory: Any) -> None:
    rig, lb = await forgetful_rig(rig_factory, "web-0", "web-1")
    lb.error = ProviderError("load balancer 10.0.0.1: timed out")
    await rotation_pass(rig, rig.t0)
    assert rig.engine.fleet.rotation_faults == {"web": "load balancer 10.0.0.1: timed out"}
    lb.hold = asyncio.Event()  # never set: the next comparison hangs
    await rig.engine.rotation_passes.reconcile(rig.service, rig.t0 + 1)
    await asyncio.sleep(0)
    (hanging,) = rig.engine.rotation_passes.running
    assert lb.compared == 2  # it is waiting for the load balancer

    await rig.engine.rotation_passes.stop()

    assert hanging.cancelled()
    assert rig.engine.rotation_passes.running == []
    assert rig.engine.fleet.rotation_faults == {}  # what this node no longer compares, it does not report
    lb.error, lb.hold = None, None
    await rotation_pass(rig, rig.t0 + 1.5)  # started again: due at once, not at the old interval
    assert lb.compared == 3 and rig.sample("healerd_rotation_up", service="web") == 1.0
