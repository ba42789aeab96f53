"""The AWS provider end to end: a real `healerd run` heals an EC2 fleet in moto (ThreadedMotoServer on
loopback), through a proxy that records every AWS operation and injects AWS errors.

One moto server for the module; every test builds its own world in it (VPC, launch template v1/v2, target
group, Auto Scaling group "web-asg-<name>" of 3 on v1, evidence bucket), so no state leaks between tests.
An instance is "sick" when the health endpoint GET /health/<instance id> answers 500.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from healerd.remediation.forensics import verify

from .aws_fixtures import (
    S3_PREFIX,
    TYPE_V1,
    AwsProxy,
    Call,
    Fault,
    Healerd,
    HealthServer,
    LoopThread,
    Moto,
    World,
    allowing_statements,
    unique,
)
from .fleet import STEPS
from .helpers import run_cli, wait_until, write_config

pytestmark = pytest.mark.e2e

POLICY = Path(__file__).resolve().parents[2] / "docs" / "aws-iam-policy.json"
ACTIONS = tuple(STEPS)
#: from the health endpoint failing to the incident resolved (fall 3 x 300 ms, 7 steps against moto)
HEAL_BOUND = 45.0

#: every AWS request healerd made in this module, through any test's proxy (checked against the IAM policy)
OBSERVED: list[Call] = []


# ---------------------------------------------------------------------------------------------------------
# Fixtures


def _healerd(hub: LoopThread, moto: Moto, tmp_path: Path, **provider: Any) -> tuple[Healerd, AwsProxy, HealthServer]:
    world = World(moto)
    proxy = AwsProxy(hub, moto.url, OBSERVED)
    health = HealthServer(hub)
    return Healerd(world, proxy, health, tmp_path, provider), proxy, health


@pytest.fixture
def make_healerd(hub: LoopThread, moto: Moto, tmp_path: Path) -> Iterator[Any]:
    made: list[tuple[Healerd, AwsProxy, HealthServer]] = []

    def make(**provider: Any) -> Healerd:
        made.append(_healerd(hub, moto, tmp_path, **provider))
        return made[-1][0]

    yield make
    unclean: list[str] = []
    for h, proxy, health in made:
        unclean += h.stop()
        proxy.close()
        health.close()
    if unclean:
        pytest.fail("healerd did not stop cleanly:\n" + "\n".join(unclean), pytrace=False)


def wait_outcome(h: Healerd, sick: str, timeout: float = HEAL_BOUND, want: str = "resolved") -> dict[str, Any]:
    """Wait until the incident about `sick` is `want` (fails at once when it ends otherwise)."""

    def done() -> Any:
        inc = next((i for i in h.incidents() if i["machine"] == sick), None)
        if inc is None:
            return None
        if inc["state"] == want:
            return inc
        if inc["state"] in ("failed", "resolved"):
            raise AssertionError(f"incident {inc['state']} (wanted {want}): {inc}\n{h.describe()}")
        return None

    found: dict[str, Any] = wait_until(
        done, timeout, f"the incident about {sick} to be {want}", interval=0.1, describe=h.describe
    )
    return found


@dataclass
class Healed:
    h: Healerd
    sick: str
    second_eni: str
    incident: dict[str, Any]
    view: dict[str, Any]


@pytest.fixture(scope="module")
def healed(hub: LoopThread, moto: Moto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Healed]:
    """The full scenario once (the tests below read its outcome): one instance of three goes sick."""
    h, proxy, health = _healerd(hub, moto, tmp_path_factory.mktemp("healed"))
    try:
        sick = h.world.original[0]
        eni = h.world.add_eni(sick)  # two network interfaces: both must end up isolated
        h.start()
        health.failing.add(sick)
        inc = wait_outcome(h, sick)
        wait_until(lambda: h.daemon.service()["state"] == "optimal", 10, "service optimal", describe=h.describe)
        view = h.daemon.json(f"/api/v1/incidents/{inc['id']}")
        yield Healed(h, sick, eni, inc, view)
    finally:
        unclean = h.stop()
        proxy.close()
        health.close()
    assert not unclean, unclean


# ---------------------------------------------------------------------------------------------------------
# 1. The full scenario


def test_a_sick_instance_is_quarantined_for_forensics_and_replaced_from_the_known_good_version(
    healed: Healed,
) -> None:
    h, world, sick, inc = healed.h, healed.h.world, healed.sick, healed.incident
    iid = inc["id"]
    ec2 = world.ec2
    assert inc["state"] == "resolved", inc
    assert all(s["state"] == "succeeded" and s["attempts"] == 1 for s in h.steps(iid)), h.steps(iid)

    # out of rotation and out of the Auto Scaling group
    assert sick not in world.targets(), world.targets()
    assert (
        world.elbv2.describe_target_health(TargetGroupArn=world.tg, Targets=[{"Id": sick, "Port": 8080}])[
            "TargetHealthDescriptions"
        ][0]["TargetHealth"]["State"]
        == "unused"
    )
    assert world.asg_client.describe_auto_scaling_instances(InstanceIds=[sick])["AutoScalingInstances"] == []
    assert sick not in world.asg_instances()

    # kept, protected, isolated on every network interface, tagged
    inst = world.instance(sick)
    assert inst["State"]["Name"] == "running"
    attr = ec2.describe_instance_attribute(InstanceId=sick, Attribute="disableApiTermination")
    assert attr["DisableApiTermination"]["Value"] is True
    with pytest.raises(ec2.exceptions.ClientError, match="OperationNotPermitted"):
        ec2.terminate_instances(InstanceIds=[sick])  # the protection is real: a plain terminate is refused
    enis = inst["NetworkInterfaces"]
    assert {e["NetworkInterfaceId"] for e in enis} >= {healed.second_eni} and len(enis) == 2, enis
    groups = {g["GroupId"] for e in enis for g in e["Groups"]}
    assert len(groups) == 1, f"every interface should carry only the isolation group: {enis}"
    (sg,) = ec2.describe_security_groups(GroupIds=list(groups))["SecurityGroups"]
    assert sg["GroupName"] == "healerd-isolation" and sg["VpcId"] == world.vpc
    assert sg["IpPermissions"] == [] and sg["IpPermissionsEgress"] == [], sg
    for e in enis:  # the interfaces themselves agree
        desc = ec2.describe_network_interfaces(NetworkInterfaceIds=[e["NetworkInterfaceId"]])["NetworkInterfaces"][0]
        assert [g["GroupId"] for g in desc["Groups"]] == [sg["GroupId"]], desc
    tags = world.tags(sick)
    assert tags.get("healerd:incident") == iid and tags.get("healerd:quarantined"), tags

    # every EBS volume snapshotted, tagged with the incident
    volumes = [b["Ebs"]["VolumeId"] for b in inst["BlockDeviceMappings"] if "Ebs" in b]
    assert len(volumes) == 2, inst["BlockDeviceMappings"]
    for vol in volumes:
        snaps = ec2.describe_snapshots(Filters=[{"Name": "volume-id", "Values": [vol]}])["Snapshots"]
        tagged = [s for s in snaps if {"Key": "healerd:incident", "Value": iid} in s.get("Tags", [])]
        assert len(tagged) == 1, f"{vol}: {snaps}"

    # the evidence bundle, locally and in S3
    bundle = h.state_dir / "forensics" / iid
    assert verify(bundle) == [], verify(bundle)
    machine = json.loads((bundle / "machine.json").read_text())
    assert machine["instance"]["InstanceId"] == sick
    assert {v["VolumeId"] for v in machine["volumes"]} == set(volumes)
    console = (bundle / "console.log").read_text()
    assert console.strip() and "unavailable" not in console, console[:300]
    evidence = json.loads((bundle / "evidence.json").read_text())
    assert len(evidence["snapshots"]) == 2, evidence
    prefix = f"{S3_PREFIX}{iid}/"
    listed = world.s3.list_objects_v2(Bucket=world.bucket, Prefix=prefix).get("Contents", [])
    files = sorted(p.name for p in bundle.iterdir())
    assert sorted(o["Key"].removeprefix(prefix) for o in listed) == files
    assert {"console.log", "machine.json", "manifest.json"} <= set(files)
    for name in ("console.log", "machine.json"):
        body = world.s3.get_object(Bucket=world.bucket, Key=prefix + name)["Body"].read()
        assert body == (bundle / name).read_bytes()

    # exactly one replacement, launched from launch template version 1 (the known-good one)
    reps = world.replacements(iid, sick)
    assert len(reps) == 1, world.dump()
    rep = reps[0]
    rid = rep["InstanceId"]
    assert inc["replacement"] == rid
    rtags = {t["Key"]: t["Value"] for t in rep["Tags"]}
    assert rep["InstanceType"] == TYPE_V1, rep["InstanceType"]
    assert rtags.get("aws:ec2launchtemplate:id") == world.lt and rtags.get("aws:ec2launchtemplate:version") == "1"
    assert rtags.get("healerd:image") == "web-lt:v1" and rtags.get("healerd:service") == "web", rtags
    assert len(world.launched_by_healerd()) == 1

    # in rotation, but only after its checks passed
    assert world.targets().get(rid) == "healthy", world.targets()
    steps = {s["action"]: s for s in h.steps(iid)}
    checked, added = steps["checks.await_healthy"], steps["rotation.add"]
    assert checked["ended_at"] <= added["started_at"], (checked, added)
    registered = h.proxy.find("elasticloadbalancing:RegisterTargets", rid) + h.proxy.find(
        "autoscaling:AttachInstances", rid
    )  # (moto registers an attached instance in the group's target groups)
    assert registered, h.proxy.ops()
    first = min(c.ts for c in registered)
    assert first >= checked["ended_at"], f"{rid} registered at {first}, its checks passed at {checked['ended_at']}"
    assert h.health.ok_before(rid, first) >= 2, "registered before `rise` passing checks"
    timeline = [t["type"] + " " + t["summary"] for t in healed.view["timeline"]]
    passed = next(i for i, t in enumerate(timeline) if "checks.await_healthy succeeded" in t)
    add_started = next(i for i, t in enumerate(timeline) if "rotation.add started" in t)
    assert passed < add_started, timeline

    # the service is whole again
    svc = h.daemon.service()
    assert svc["state"] == "optimal", svc
    machines = h.daemon.machines()
    assert machines[sick]["lifecycle"] == "quarantined" and machines[rid]["lifecycle"] == "in_service"
    assert h.lifecycle(sick) == "quarantined"


def test_the_auto_scaling_group_does_not_launch_a_second_replacement(healed: Healed) -> None:
    """docs/aws.md: with asg_decrement (default true) healerd decrements the group when it detaches, and
    attaches its own replacement (desired back up) once it passed its checks. So the group ends with the two
    healthy originals and healerd's replacement, desired 3, and no instance launched by the group itself."""
    world, sick = healed.h.world, healed.sick
    rid = healed.incident["replacement"]
    survivors = sorted(set(world.original) - {sick})
    group = world.group()
    assert {
        "instances": sorted(i["InstanceId"] for i in group["Instances"]),
        "desired": group["DesiredCapacity"],
    } == {"instances": sorted([*survivors, rid]), "desired": 3}, world.dump()
    detach = healed.h.proxy.find("autoscaling:DetachInstances", sick)
    assert detach and detach[0].params.get("ShouldDecrementDesiredCapacity") == "true", detach


# ---------------------------------------------------------------------------------------------------------
# 4. Terminating a quarantined instance


def test_terminate_lifts_the_protection_and_keeps_the_snapshots(healed: Healed) -> None:
    h, world, sick = healed.h, healed.h.world, healed.sick
    evidence = json.loads((h.state_dir / "forensics" / healed.incident["id"] / "evidence.json").read_text())
    snapshots = evidence["snapshots"]
    listed = {q["id"]: q for q in h.daemon.json("/api/v1/quarantine")["quarantined"]}
    assert sick in listed and sorted(listed[sick]["evidence"]["snapshots"]) == sorted(snapshots), listed

    assert world.tags(sick).get("healerd:quarantined"), "the IAM policy lets healerd terminate only tagged instances"
    cli = run_cli("quarantine", "terminate", sick, "--url", h.daemon.url)
    assert cli.returncode == 0, cli
    assert sick not in {q["id"] for q in h.daemon.json("/api/v1/quarantine")["quarantined"]}
    assert world.instance(sick)["State"]["Name"] in ("shutting-down", "terminated")
    attr = world.ec2.describe_instance_attribute(InstanceId=sick, Attribute="disableApiTermination")
    assert attr["DisableApiTermination"]["Value"] is False
    kept = world.ec2.describe_snapshots(SnapshotIds=snapshots)["Snapshots"]
    assert sorted(s["SnapshotId"] for s in kept) == sorted(snapshots)
    assert all({"Key": "healerd:incident", "Value": healed.incident["id"]} in s["Tags"] for s in kept)
    assert h.lifecycle(sick) == "terminated"
    assert verify(h.state_dir / "forensics" / healed.incident["id"]) == []  # the bundle is kept too
    # the rest of the fleet is untouched
    rid = healed.incident["replacement"]
    assert world.instance(rid)["State"]["Name"] == "running" and world.targets().get(rid) == "healthy"

    # a second terminate (the API this time): it is no longer quarantined
    status, body = h.daemon.post(f"/api/v1/quarantine/{sick}/terminate")
    assert status == 404, body


# ---------------------------------------------------------------------------------------------------------
# 2. kill -9 at every step


@pytest.mark.parametrize("crash_at", [*ACTIONS, "machine.launch_replacement:after", "rotation.add:after"])
def test_kill_9_at_a_step_then_restart_finishes_with_exactly_one_replacement(make_healerd: Any, crash_at: str) -> None:
    h: Healerd = make_healerd()
    world = h.world
    sick = world.original[1]
    crashing = h.start(crash_at=crash_at)
    h.health.failing.add(sick)
    wait_until(lambda: not crashing.alive(), 30, f"healerd to kill itself at {crash_at}", describe=h.describe)
    assert crashing.returncode == -9, crashing.describe()
    assert "fault injection" in crashing.output()
    inc = h.incident()
    assert inc is not None and inc["state"] == "remediating", h.describe()

    h.start()
    inc = wait_outcome(h, sick)
    reps = world.replacements(inc["id"], sick)
    assert len(reps) == 1, f"{len(reps)} replacements for {inc['id']}:\n{h.describe()}"
    rid = reps[0]["InstanceId"]
    assert inc["replacement"] == rid
    assert len(world.launched_by_healerd()) == 1, world.dump()
    assert h.proxy.find("ec2:RunInstances") and len(h.proxy.find("ec2:RunInstances")) == 1, (
        "one RunInstances for the incident (moto ignores ClientToken, so a second one would be a second instance)"
    )
    assert world.targets().get(rid) == "healthy" and sick not in world.targets(), world.dump()
    assert world.tags(sick).get("healerd:incident") == inc["id"]
    assert h.lifecycle(sick) == "quarantined" and h.lifecycle(rid) == "in_service"
    assert verify(h.state_dir / "forensics" / inc["id"]) == []
    steps = h.steps(inc["id"])
    assert [s["state"] for s in steps] == ["succeeded"] * len(ACTIONS), steps
    wait_until(lambda: h.daemon.service()["state"] == "optimal", 10, "service optimal", describe=h.describe)


def crash_when_answered(h: Healerd, op: str) -> None:
    """Start healerd, make one instance sick, SIGKILL healerd as soon as AWS has answered `op` (before healerd
    sees the answer), then start it again (without any fault injection)."""
    crashing = h.start()

    def kill(call: Any) -> None:
        if call.op == op and crashing.alive():
            os.kill(crashing.pid, signal.SIGKILL)

    h.proxy.on_answer = kill
    h.health.failing.add(h.world.original[0])
    wait_until(lambda: not crashing.alive(), 30, f"healerd killed when {op} was answered", describe=h.describe)
    h.proxy.on_answer = None
    assert crashing.returncode == -9 and h.proxy.find(op), h.describe()
    h.start()


def tag_discovery(h: Healerd) -> None:
    h.config["services"]["web"]["discovery"] = {"tags": {"e2e:world": h.world.name}}
    write_config(h.config_path, h.config)


def test_kill_9_while_run_instances_is_answered_does_not_launch_a_second_instance(make_healerd: Any) -> None:
    """The crash no fault-injection point reaches: AWS launched the instance, healerd never saw the answer.
    moto ignores ClientToken, so only healerd's pre-launch lookup of an instance tagged healerd:machine=<its
    id> keeps the restarted daemon from launching a second one."""
    h: Healerd = make_healerd()
    world, sick = h.world, h.world.original[0]
    crash_when_answered(h, "ec2:RunInstances")
    inc = wait_outcome(h, sick)
    reps = world.replacements(inc["id"], sick)
    assert len(reps) == 1 and len(world.launched_by_healerd()) == 1, world.dump()
    assert len(h.proxy.find("ec2:RunInstances")) == 1, h.proxy.ops()
    assert inc["replacement"] == reps[0]["InstanceId"]
    assert world.targets().get(inc["replacement"]) == "healthy", world.dump()


def test_kill_9_after_a_snapshot_does_not_snapshot_a_volume_twice(make_healerd: Any) -> None:
    """Killed inside machine.quarantine, after the first volume's snapshot: the re-run finds it (tagged with
    the incident) and snapshots only the other volume."""
    h: Healerd = make_healerd()
    tag_discovery(h)
    world, sick = h.world, h.world.original[0]
    crash_when_answered(h, "ec2:CreateSnapshot")
    inc = wait_outcome(h, sick)
    volumes = [b["Ebs"]["VolumeId"] for b in world.instance(sick)["BlockDeviceMappings"]]
    snaps = world.ec2.describe_snapshots(Filters=[{"Name": "tag:healerd:incident", "Values": [inc["id"]]}])
    assert sorted(s["VolumeId"] for s in snaps["Snapshots"]) == sorted(volumes), snaps["Snapshots"]
    assert len(h.proxy.find("ec2:CreateSnapshot")) == 2
    assert len(world.replacements(inc["id"], sick)) == 1


def test_kill_9_inside_quarantine_after_the_detach_still_heals(make_healerd: Any) -> None:
    h: Healerd = make_healerd()
    world, sick = h.world, h.world.original[0]
    crash_when_answered(h, "autoscaling:DetachInstances")
    inc = wait_outcome(h, sick)
    assert world.tags(sick).get("healerd:incident") == inc["id"]
    assert len(world.replacements(inc["id"], sick)) == 1
    assert h.lifecycle(sick) == "quarantined"


def test_kill_9_inside_quarantine_keeps_the_original_security_groups_for_release(make_healerd: Any) -> None:
    h: Healerd = make_healerd()
    tag_discovery(h)
    world, sick = h.world, h.world.original[0]
    original = {
        e["NetworkInterfaceId"]: [g["GroupId"] for g in e["Groups"]] for e in world.instance(sick)["NetworkInterfaces"]
    }
    crash_when_answered(h, "ec2:ModifyNetworkInterfaceAttribute")
    wait_outcome(h, sick)
    status, body = h.daemon.post(f"/api/v1/quarantine/{sick}/release", {"to_rotation": False})
    assert status == 200, body
    after = {
        e["NetworkInterfaceId"]: [g["GroupId"] for g in e["Groups"]] for e in world.instance(sick)["NetworkInterfaces"]
    }
    assert after == original


# ---------------------------------------------------------------------------------------------------------
# 3. AWS errors: throttling is absorbed, a permission error fails the step naming the action


THROTTLE = "Rate exceeded"


def test_throttling_delays_the_steps_but_does_not_fail_them(make_healerd: Any) -> None:
    h: Healerd = make_healerd()
    sick = h.world.original[2]
    h.start()
    # the next request of each service is throttled, and every other EC2 one up to three: each throttled call
    # gets through on its botocore retry (adaptive mode then also paces that client's next calls)
    faults = [
        h.proxy.add_fault(Fault("ec2", "Throttling", THROTTLE, times=3, every=2)),
        h.proxy.add_fault(Fault("elasticloadbalancing", "Throttling", THROTTLE, times=1)),
        h.proxy.add_fault(Fault("autoscaling", "Throttling", THROTTLE, times=1)),
    ]
    since = len(h.proxy.calls)
    h.health.failing.add(sick)
    inc = wait_outcome(h, sick, timeout=60)
    assert [f.injected for f in faults] == [3, 1, 1], h.describe()
    steps = h.steps(inc["id"])
    assert all(s["state"] == "succeeded" and s["attempts"] == 1 for s in steps), steps
    # every throttled request was retried: the same operation comes again right after
    calls = h.proxy.calls[since:]
    for i, c in enumerate(calls):
        if c.injected:
            again = [d for d in calls[i + 1 :] if d.op == c.op and d.params == c.params and not d.injected]
            assert again, f"{c.op} throttled and never retried"
    assert len(h.world.replacements(inc["id"], sick)) == 1


def test_a_permission_error_fails_the_step_naming_the_action(make_healerd: Any) -> None:
    h: Healerd = make_healerd()
    sick = h.world.original[0]
    h.start()
    fault = h.proxy.add_fault(
        Fault(
            "ec2",
            "UnauthorizedOperation",
            "You are not authorized to perform this operation.",
            action="CreateSnapshot",
            status=403,
            times=100,
        )
    )
    h.health.failing.add(sick)
    inc = wait_outcome(h, sick, timeout=30, want="failed")
    assert fault.injected >= 1
    steps = {s["action"]: s for s in h.steps(inc["id"])}
    step = steps["machine.quarantine"]
    assert step["state"] == "failed", steps
    for text in (step["error"], inc["error"]):
        assert "ec2:CreateSnapshot" in text and "UnauthorizedOperation" in text, text
        assert "vol-" in text, text  # names the resource too
    assert "machine.launch_replacement" not in steps  # it stopped there
    assert h.world.replacements(inc["id"], sick) == []
    view = h.daemon.json(f"/api/v1/incidents/{inc['id']}")
    assert view["state"] == "failed" and "ec2:CreateSnapshot" in view["error"]


# ---------------------------------------------------------------------------------------------------------
# 6. Repair before replace: a reboot that mends the instance keeps it

LADDER = [{"playbook": "reboot-machine", "timeout": "30s"}, {"playbook": "replace-machine"}]
QUARANTINE_OPS = (
    "ec2:CreateSnapshot",
    "ec2:ModifyInstanceAttribute",
    "ec2:ModifyNetworkInterfaceAttribute",
    "ec2:CreateTags",
    "autoscaling:DetachInstances",
    "autoscaling:EnterStandby",
)


@dataclass
class Rebooted:
    h: Healerd
    sick: str
    incident: dict[str, Any]
    view: dict[str, Any]
    took: float  # from the health endpoint failing to the incident resolved


@pytest.fixture(scope="module")
def rebooted(hub: LoopThread, moto: Moto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rebooted]:
    """A service whose ladder reboots before it replaces; one instance goes sick, and its reboot mends it."""
    h, proxy, health = _healerd(hub, moto, tmp_path_factory.mktemp("rebooted"))
    try:
        h.config["services"]["web"]["remediation"]["ladder"] = LADDER
        write_config(h.config_path, h.config)
        sick = h.world.original[0]

        def mend(call: Call) -> None:  # EC2 answered the reboot: the instance comes back healthy
            if call.op == "ec2:RebootInstances" and sick in call.ids() and call.status == 200:
                health.failing.discard(sick)

        proxy.on_answer = mend
        h.start()
        failed_at = time.monotonic()
        health.failing.add(sick)
        inc = wait_outcome(h, sick)
        took = time.monotonic() - failed_at
        print(f"\n{sick} healed by reboot-machine in {took:.1f}s")
        wait_until(lambda: h.daemon.service()["state"] == "optimal", 10, "service optimal", describe=h.describe)
        view = h.daemon.json(f"/api/v1/incidents/{inc['id']}")
        yield Rebooted(h, sick, inc, view, took)
    finally:
        proxy.on_answer = None
        unclean = h.stop()
        proxy.close()
        health.close()
    assert not unclean, unclean


def test_a_reboot_that_mends_the_instance_keeps_it_without_quarantine_or_replacement(rebooted: Rebooted) -> None:
    h, world, sick, inc = rebooted.h, rebooted.h.world, rebooted.sick, rebooted.incident
    assert rebooted.took < HEAL_BOUND

    # rebooted once, through EC2, and that healed it
    reboots = h.proxy.find("ec2:RebootInstances")
    assert [c.ids() for c in reboots] == [{sick}], reboots
    timeline = [t["summary"] for t in rebooted.view["timeline"]]
    assert any(f"incident {inc['id']} resolved: healed by reboot-machine" in t for t in timeline), timeline
    assert rebooted.view["ladder"]["healed_by"] == "reboot-machine" and rebooted.view["ladder"]["tried"] == []

    # nothing launched, nothing quarantined, no evidence taken
    assert h.proxy.find("ec2:RunInstances") == [] and world.launched_by_healerd() == [], world.dump()
    assert h.proxy.find("ec2:CreateSnapshot") == [], h.proxy.ops()
    touched = [c.op for op in QUARANTINE_OPS for c in h.proxy.find(op, sick)]
    assert touched == [], touched
    assert not {"healerd:quarantined", "healerd:incident"} & set(world.tags(sick)), world.tags(sick)
    assert h.daemon.json("/api/v1/quarantine")["quarantined"] == []
    assert not (h.state_dir / "forensics" / inc["id"]).exists()

    # out of rotation while it was worked on, back once its checks passed again; still in its group
    (reboot,) = reboots
    out = [c.ts for c in h.proxy.find("elasticloadbalancing:DeregisterTargets", sick)]
    back = [c.ts for c in h.proxy.find("elasticloadbalancing:RegisterTargets", sick) if c.ts > reboot.ts]
    assert out and max(out) < reboot.ts, h.proxy.ops()
    assert back and h.health.ok_before(sick, min(back)) >= 2, "back in rotation before `rise` passing checks"
    assert world.targets().get(sick) == "healthy", world.targets()
    assert world.asg_instances() == world.original and world.group()["DesiredCapacity"] == 3, world.dump()
    assert world.instance(sick)["State"]["Name"] == "running"
    assert h.lifecycle(sick) == "in_service" and h.daemon.machines()[sick]["lifecycle"] == "in_service"


# ---------------------------------------------------------------------------------------------------------
# 5. The IAM policy covers every call


def test_the_iam_policy_allows_every_operation_healerd_made(healed: Healed, rebooted: Rebooted, moto: Moto) -> None:
    """Runs last: OBSERVED holds the requests of every test above (at least the full scenario's and the
    reboot's)."""
    deadline = time.monotonic() + 300
    while not POLICY.exists() and time.monotonic() < deadline:
        time.sleep(5)
    policy = json.loads(POLICY.read_text())
    observed = unique(c.op for c in OBSERVED)
    print("\nAWS operations observed:", " ".join(observed))
    expected = {
        "ec2:DescribeInstances",
        "ec2:RunInstances",
        "ec2:RebootInstances",
        "ec2:CreateSnapshot",
        "ec2:ModifyNetworkInterfaceAttribute",
        "ec2:ModifyInstanceAttribute",
        "autoscaling:DetachInstances",
        "autoscaling:AttachInstances",
        "elasticloadbalancing:RegisterTargets",
        "elasticloadbalancing:DeregisterTargets",
        "s3:PutObject",
    }
    assert expected <= set(observed), observed
    denied = [op for op in observed if not allowing_statements(op, policy)]
    assert denied == [], f"operations healerd made that {POLICY.name} does not allow: {denied}"

    # resources: the evidence objects are within the S3 statement's ARN pattern
    for c in OBSERVED:
        if c.service == "s3":
            arn = "arn:aws:s3:::" + c.params["Path"].lstrip("/")
            assert allowing_statements(c.op, policy, arn), f"{c.op} on {arn} is outside the policy's Resource"

    # conditions: what healerd terminates or reboots carries the tag a conditional statement asks for (IAM allows a
    # call when any one statement matches, so one statement whose conditions all hold is enough)
    ec2 = moto.client("ec2")

    def instance_tags(iid: str) -> dict[str, str]:
        return {
            t["Key"]: t["Value"]
            for r in ec2.describe_instances(InstanceIds=[iid])["Reservations"]
            for i in r["Instances"]
            for t in i.get("Tags", [])
        }

    def holds(st: dict[str, Any], iid: str) -> bool:
        tags = instance_tags(iid)
        for test, cond in st.get("Condition", {}).items():
            assert test in ("StringLike", "StringEquals"), f"unchecked condition {test}"
            for key, pattern in cond.items():
                tag = key.removeprefix("ec2:ResourceTag/")
                assert tag != key, f"unchecked condition key {key}"
                if tag not in tags or not any(_fnmatch(p, tags[tag]) for p in _list(pattern)):
                    return False
        return True

    for c in OBSERVED:
        statements = allowing_statements(c.op, policy)
        if not any("Condition" in st for st in statements):
            continue
        for iid in c.ids():
            assert any(holds(st, iid) for st in statements), (
                f"{c.op} on {iid} (tags {instance_tags(iid)}): no statement of {POLICY.name} allows it"
            )


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


def _fnmatch(pattern: str, value: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(value, pattern)
