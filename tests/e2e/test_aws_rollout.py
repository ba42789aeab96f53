"""Image promotion (docs/rollouts.md) on AWS end to end: a real `healerd run` rolls launch template version 2 over an
Auto Scaling group of 3 on version 1 in moto (ThreadedMotoServer on loopback), through the recording proxy of
aws_fixtures.py.

Two scenarios, each run once per module and read by the tests below it:

* `promoted`: the candidate's canary passes probation and the bake's judgement; v2 becomes known-good, the Auto
  Scaling group is pointed at LT version 2, and every v1 instance is replaced (launch, probation, register, then
  deregister, detach with decrement, terminate: retired, never quarantined).
* `rejected`: every instance launched after the world was built answers 500 on its health endpoint, so the
  canary fails probation; the rollout rolls back, v2 is rejected, and nothing of the v1 fleet changes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import free_port

from .aws_fixtures import (
    TYPE_V1,
    TYPE_V2,
    AwsProxy,
    Call,
    Healerd,
    HealthServer,
    LoopThread,
    Moto,
    World,
    allowing_statements,
    unique,
)
from .helpers import wait_until, write_config

pytestmark = pytest.mark.e2e

POLICY = Path(__file__).resolve().parents[2] / "docs" / "aws-iam-policy.json"
SERVICE = "web"
IMAGE = "web-lt"
#: from the rollout's start to `completed`: a canary (probation + 3 s bake) and two refresh waves against moto
ROLLOUT_BOUND = 60.0

#: every AWS request healerd made in this module (checked against the IAM policy by the last test)
OBSERVED: list[Call] = []


def rollout_config() -> dict[str, Any]:
    """A short rollout. The judge keeps its logic but not its production sample sizes: 5 results a side, and a
    latency floor of 100 ms (a check times out at 250 ms, so loopback jitter cannot reach the 3x ratio: only a
    candidate that times out could). The error-rate margin (20 %) tolerates one stray timeout of the 10 or so
    canary results on a loaded machine; a canary that fails its checks is far above it."""
    return {
        "canary": 1,
        "bake": "3s",
        "max_surge": 1,
        "max_unavailable": 0,
        "probation_timeout": "30s",
        "drain": "200ms",
        "judge": {"min_results": 5, "max_error_rate": "20%", "max_latency_ratio": 3, "latency_floor": "100ms"},
    }


# ---------------------------------------------------------------------------------------------------------
# Health endpoints that can fail every instance launched after the world was built


class NewcomersFail(HealthServer):
    """As HealthServer, and once `only_healthy` is set, every instance not in it answers 500 from its first
    check on (the canary's id is not known before it is launched)."""

    def __init__(self, hub: LoopThread) -> None:
        self.only_healthy: set[str] | None = None
        super().__init__(hub)

    async def _health(self, request: web.Request) -> web.Response:
        iid = request.match_info["id"]
        if self.only_healthy is not None and iid not in self.only_healthy:
            self.hits.setdefault(iid, []).append((time.time(), 500))
            return web.Response(status=500, text="broken")
        return await super()._health(request)


# ---------------------------------------------------------------------------------------------------------
# Fixtures


@dataclass
class Outcome:
    h: Healerd
    since: int  # index of the first AWS call made after the rollout was requested
    started: dict[str, Any]  # the POST's answer
    view: dict[str, Any]  # GET .../rollout once it ended
    images: dict[str, Any]  # GET /api/v1/images's entry for IMAGE
    machines: dict[str, dict[str, Any]]  # GET /api/v1/machines
    events: list[dict[str, Any]]
    took: float

    @property
    def world(self) -> World:
        return self.h.world

    @property
    def calls(self) -> list[Call]:
        return self.h.proxy.calls[self.since :]

    def find(self, op: str) -> list[Call]:
        return [c for c in self.calls if c.op == op]

    def versions(self) -> dict[str, dict[str, Any]]:
        return {v["version"]: v for v in self.images["versions"]}


def _tags_of(call: Call) -> dict[str, str]:
    """The instance tags a RunInstances request asks for (TagSpecification.N.Tag.M.Key/Value)."""
    out = {}
    for k, v in call.params.items():
        if k.startswith("TagSpecification.") and k.endswith(".Key"):
            out[v] = call.params.get(k[: -len("Key")] + "Value", "")
    return out


def _rollout(h: Healerd) -> dict[str, Any] | None:
    status, body = h.daemon.get(f"/api/v1/services/{SERVICE}/rollout")
    if status == 404:
        return None
    assert status == 200, (status, body[:500])
    return dict(json.loads(body))


def _start(h: Healerd, attempts: int = 3) -> None:
    """`h.start()`, on another port when the one picked was taken meanwhile (free_port only finds a port free
    at the time: under xdist another worker's daemon, server or outgoing connection may take it first)."""
    for attempt in range(attempts):
        try:
            h.start()
            return
        except AssertionError:
            if attempt == attempts - 1 or "address already in use" not in h.daemon.output():
                raise
            h.daemon.stop()
        h.port = free_port()
        h.config["daemon"]["listen"] = f"127.0.0.1:{h.port}"
        write_config(h.config_path, h.config)


def _run_scenario(
    hub: LoopThread, moto: Moto, tmp_path: Path, want: str, fail_newcomers: bool, **remediation: Any
) -> Iterator[Outcome]:
    world = World(moto)
    proxy = AwsProxy(hub, moto.url, OBSERVED)
    health = NewcomersFail(hub)
    h = Healerd(world, proxy, health, tmp_path)
    h.config["images"][IMAGE]["rollout"] = rollout_config()
    h.config["services"][SERVICE]["remediation"].update(remediation)
    write_config(h.config_path, h.config)
    try:
        _start(h)
        # the baseline: the three v1 instances in service and passing their checks
        wait_until(
            lambda: (
                h.daemon.service()["state"] == "optimal"
                and sorted(m for m, v in h.daemon.machines().items() if v["lifecycle"] == "in_service" and v["up"])
                == world.original
            ),
            20,
            "the three v1 instances in service and up",
            interval=0.1,
            describe=h.describe,
        )
        if fail_newcomers:
            health.only_healthy = set(world.original)
        since = len(proxy.calls)
        t0 = time.monotonic()
        status, started = h.daemon.post(
            f"/api/v1/services/{SERVICE}/rollout", {"version": "v2", "canary": 1, "bake": "3s", "by": "e2e"}
        )
        assert status == 202, (status, started)

        def ended() -> dict[str, Any] | None:
            view = _rollout(h)
            if view is None or view["active"]:
                return None
            if view["stage"] != want:
                raise AssertionError(f"the rollout ended {view['stage']} (wanted {want}): {view}\n{h.describe()}")
            return view

        view = wait_until(ended, ROLLOUT_BOUND, f"the rollout to end {want}", interval=0.2, describe=h.describe)
        took = time.monotonic() - t0
        assert view is not None
        images = next(i for i in h.daemon.json("/api/v1/images")["images"] if i["name"] == IMAGE)
        yield Outcome(
            h,
            since,
            started,
            view,
            images,
            h.daemon.machines(),
            h.daemon.events(service=SERVICE),
            took,
        )
    finally:
        unclean = h.stop()
        proxy.close()
        health.close()
    assert not unclean, unclean


@pytest.fixture(scope="module")
def promoted(hub: LoopThread, moto: Moto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    yield from _run_scenario(hub, moto, tmp_path_factory.mktemp("promoted"), "completed", fail_newcomers=False)


@pytest.fixture(scope="module")
def rejected(hub: LoopThread, moto: Moto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    # a new instance's failures count once it has run 2 s (boot_timeout) instead of 5 minutes
    yield from _run_scenario(
        hub, moto, tmp_path_factory.mktemp("rejected"), "rolled_back", fail_newcomers=True, boot_timeout="2s"
    )


#: what quarantining an instance calls (test_aws.py): none of it for a machine a rollout retires
QUARANTINE_OPS = {"ec2:CreateSnapshot", "ec2:ModifyNetworkInterfaceAttribute", "ec2:ModifyInstanceAttribute"}


def _not_quarantined(o: Outcome, iid: str) -> None:
    """What test_aws.py finds on a quarantined instance, absent: its tags, termination protection, the
    isolation security group, snapshots of its volumes."""
    world = o.world
    tags = world.tags(iid)
    assert "healerd:quarantined" not in tags and "healerd:incident" not in tags, tags
    assert tags.get("healerd:retired"), f"{iid} was terminated without the healerd:retired tag: {tags}"
    attr = world.ec2.describe_instance_attribute(InstanceId=iid, Attribute="disableApiTermination")
    assert attr["DisableApiTermination"]["Value"] is False
    for eni in world.instance(iid).get("NetworkInterfaces", []):
        names = {g.get("GroupName") for g in eni.get("Groups", [])}
        assert "healerd-isolation" not in names, eni
    assert not [c for c in o.calls if iid in c.ids() and c.op in QUARANTINE_OPS], [
        c.op for c in o.calls if iid in c.ids()
    ]
    assert not o.find("ec2:CreateSnapshot")  # (names volumes, not the instance: none at all, no incident here)
    assert o.h.lifecycle(iid) == "terminated"
    retired = [e for e in o.events if e["type"] == "machine.retired" and e["machine"] == iid]
    assert len(retired) == 1 and retired[0]["details"]["outcome"] == "terminated", retired


def _no_isolation_group(world: World) -> None:
    found = world.ec2.describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [world.vpc]}, {"Name": "group-name", "Values": ["healerd-isolation"]}]
    )["SecurityGroups"]
    assert found == [], found


# ---------------------------------------------------------------------------------------------------------
# 1. Launch template version 2 promoted and rolled over the group


def check_the_rollout_goes_through_its_stages_to_completed(promoted: Outcome) -> None:
    o = promoted
    print(f"\nrollout completed in {o.took:.1f}s")
    assert o.took < ROLLOUT_BOUND
    assert o.started["version"] == "v2" and o.started["previous"] == "v1" and o.started["stage"] == "canary"
    v = o.view
    assert (v["stage"], v["active"], v["paused"], v["version"], v["previous"]) == (
        "completed",
        False,
        False,
        "v2",
        "v1",
    ), v
    assert v["started_by"] == "e2e" and v["ended_at"] and v["promoted_at"], v
    # judged on evidence: both sides had results, and the judge passed the candidate
    judge = v["judge"]
    assert judge["outcome"] == "pass", judge
    assert judge["canary_results"] >= 5 and judge["baseline_results"] >= 5, judge
    assert judge["canary_error_rate"] == 0, judge
    # the rollout's machines: its canary and the two machines of the refresh, all serving v2
    live = {i["InstanceId"] for i in o.world.instances([{"Name": "instance-state-name", "Values": ["running"]}])}
    assert {m["machine"] for m in v["machines"]} == live, (v["machines"], live)
    assert sorted(m["role"] for m in v["machines"]) == ["canary", "refresh", "refresh"], v["machines"]
    assert all(m["version"] == "v2" and m["lifecycle"] == "in_service" for m in v["machines"]), v["machines"]
    assert v["progress"] == {"target": "v2", "new": 3, "old": 0, "desired": 3}, v["progress"]
    kinds = [e["type"] for e in o.events if e["type"].startswith("rollout.")]
    assert kinds == ["rollout.started", "rollout.promoted", "rollout.completed"], kinds
    assert not o.h.incidents(), o.h.incidents()  # no playbook ran: the rollout did it all


def check_every_running_instance_was_launched_from_launch_template_version_2(promoted: Outcome) -> None:
    o, world = promoted, promoted.world
    live = world.instances([{"Name": "instance-state-name", "Values": ["pending", "running"]}])
    assert len(live) == world.desired, world.dump()
    for inst in live:
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        # what AWS (and moto) stamp on an instance launched from a template, and what the template's v2 sets
        assert tags.get("aws:ec2launchtemplate:id") == world.lt, tags
        assert tags.get("aws:ec2launchtemplate:version") == "2", tags
        assert inst["InstanceType"] == TYPE_V2, inst["InstanceType"]
        assert tags.get("healerd:image") == f"{IMAGE}:v2" and tags.get("healerd:service") == SERVICE, tags
        assert tags.get("healerd:machine"), tags
    new = {i["InstanceId"] for i in live}
    assert not new & set(world.original)
    # healerd's view agrees: the in-service machines are exactly these, on v2
    serving = {mid for mid, m in o.machines.items() if m["lifecycle"] == "in_service"}
    assert serving == new, (serving, new)
    assert all(o.machines[mid]["up"] for mid in serving), o.machines
    svc = o.h.daemon.service()
    assert svc["state"] == "optimal", svc


def check_every_v1_instance_is_terminated_not_quarantined(promoted: Outcome) -> None:
    o, world = promoted, promoted.world
    for iid in world.original:
        inst = world.instance(iid)
        assert inst["State"]["Name"] in ("shutting-down", "terminated"), inst["State"]
        assert inst["InstanceType"] == TYPE_V1
        _not_quarantined(o, iid)
        detach = [c for c in o.find("autoscaling:DetachInstances") if iid in c.ids()]
        assert len(detach) == 1 and detach[0].params.get("ShouldDecrementDesiredCapacity") == "true", detach
    _no_isolation_group(world)
    assert not o.find("ec2:CreateSnapshot") and not o.find("ec2:ModifyNetworkInterfaceAttribute")
    assert o.h.daemon.json("/api/v1/quarantine")["quarantined"] == []


def check_the_target_group_serves_exactly_the_new_machines(promoted: Outcome) -> None:
    o, world = promoted, promoted.world
    targets = world.targets()
    serving = {mid for mid, m in o.machines.items() if m["lifecycle"] == "in_service"}
    assert set(targets) == serving and len(targets) == world.desired, (targets, serving)
    assert set(targets.values()) <= {"healthy", "initial"}, targets
    for iid in world.original:  # deregistered, not merely draining
        desc = world.elbv2.describe_target_health(TargetGroupArn=world.tg, Targets=[{"Id": iid, "Port": 8080}])
        assert desc["TargetHealthDescriptions"][0]["TargetHealth"]["State"] == "unused", desc


def check_capacity_never_dropped_below_desired_nor_surged_above_one_extra(promoted: Outcome) -> None:
    """max_unavailable 0, max_surge 1: replaying the target group's registrations in the order healerd made
    them, the group always had at least `desired` targets (a new one registered before each old one left) and
    at most desired + 1 (the canary, then one replacement at a time)."""
    o, world = promoted, promoted.world
    registered = set(world.original)
    sizes = []
    for c in o.calls:
        if c.status >= 300:
            continue
        if c.op in ("elasticloadbalancing:RegisterTargets", "autoscaling:AttachInstances"):
            registered |= c.ids()  # (moto registers an attached instance in the group's target groups)
        elif c.op == "elasticloadbalancing:DeregisterTargets":
            registered -= c.ids()
        else:
            continue
        sizes.append(len(registered))
    assert sizes and min(sizes) >= world.desired and max(sizes) == world.desired + 1, sizes
    # every new instance passed its checks (rise 2) before it entered the group or the target group
    for iid in {i["InstanceId"] for i in world.launched_by_healerd()}:
        entered = [
            c.ts
            for c in o.calls
            if c.op in ("elasticloadbalancing:RegisterTargets", "autoscaling:AttachInstances") and iid in c.ids()
        ]
        assert entered, f"{iid} never entered rotation"
        assert o.h.health.ok_before(iid, min(entered)) >= 2, f"{iid} entered rotation before `rise` passing checks"
    # and every old instance was out of the target group before it was terminated
    for iid in world.original:
        out = min(c.ts for c in o.find("elasticloadbalancing:DeregisterTargets") if iid in c.ids())
        gone = min(c.ts for c in o.find("ec2:TerminateInstances") if iid in c.ids())
        assert out <= gone, iid


def check_the_auto_scaling_group_holds_the_new_instances_and_launches_from_version_2(promoted: Outcome) -> None:
    o, world = promoted, promoted.world
    group = world.group()
    live = sorted(
        i["InstanceId"] for i in world.instances([{"Name": "instance-state-name", "Values": ["pending", "running"]}])
    )
    assert sorted(i["InstanceId"] for i in group["Instances"]) == live, world.dump()
    assert group["DesiredCapacity"] == world.desired, group["DesiredCapacity"]
    lt = group["LaunchTemplate"]
    assert lt["LaunchTemplateId"] == world.lt and lt["Version"] == "2", lt
    updates = o.find("autoscaling:UpdateAutoScalingGroup")
    assert len(updates) == 1, [u.params for u in updates]
    assert updates[0].params.get("LaunchTemplate.Version") == "2", updates[0].params
    assert updates[0].params.get("AutoScalingGroupName") == world.asg, updates[0].params
    # the group was pointed at v2 when the candidate was promoted: before the first v1 instance left
    first_out = min(c.ts for c in o.find("autoscaling:DetachInstances"))
    assert updates[0].ts <= first_out


def check_the_images_show_v2_known_good_and_v1_retired(promoted: Outcome) -> None:
    o = promoted
    assert o.images["known_good"] == "v2", o.images
    versions = o.versions()
    assert versions["v2"]["state"] == "known_good", versions
    assert versions["v2"]["evidence"].get("rollout") == o.view["id"], versions["v2"]
    assert versions["v2"]["evidence"].get("judge", {}).get("outcome") == "pass", versions["v2"]
    assert versions["v1"]["state"] == "retired" and "v2" in versions["v1"]["reason"], versions["v1"]


def check_exactly_desired_instances_were_launched_and_none_of_them_terminated(promoted: Outcome) -> None:
    """One canary and one replacement per old instance beyond the canary's extra one: `desired` launches in all.
    moto ignores ClientToken, so a retried RunInstances would be a second instance: count the requests, and the
    distinct healerd:machine tags they carry."""
    o, world = promoted, promoted.world
    runs = o.find("ec2:RunInstances")
    assert len(runs) == world.desired, [_tags_of(c) for c in runs]
    machines = {_tags_of(c).get("healerd:machine") for c in runs}
    assert len(machines) == world.desired and None not in machines, machines
    assert all(_tags_of(c).get("healerd:image") == f"{IMAGE}:v2" for c in runs)
    assert all(c.params.get("LaunchTemplate.Version") == "2" for c in runs), [c.params for c in runs]
    assert len(world.launched_by_healerd()) == world.desired, world.dump()
    new = {i["InstanceId"] for i in world.launched_by_healerd()}
    terminated = set().union(*(c.ids() for c in o.find("ec2:TerminateInstances")))
    assert not terminated & new, terminated & new
    assert terminated == set(world.original), terminated
    assert len(o.find("ec2:TerminateInstances")) == len(world.original)


# ---------------------------------------------------------------------------------------------------------
# 2. A canary that fails probation: rolled back, v2 rejected, the v1 fleet untouched


def check_a_canary_failing_probation_rolls_the_rollout_back(rejected: Outcome) -> None:
    o = rejected
    print(f"\nrollout rolled back in {o.took:.1f}s")
    v = o.view
    assert (v["stage"], v["active"], v["version"], v["previous"]) == ("rolled_back", False, "v2", "v1"), v
    canaries = o.world.launched_by_healerd()
    assert len(canaries) == 1, o.world.dump()
    canary = canaries[0]["InstanceId"]
    assert "failed probation" in v["reason"] and canary in v["reason"], v["reason"]
    assert "its checks failed" in v["reason"] and "HTTP 500" in v["reason"], v["reason"]  # said why
    assert v["machines"] == [], v["machines"]
    kinds = [e["type"] for e in o.events if e["type"].startswith("rollout.")]
    assert kinds == ["rollout.started", "rollout.rolled_back"], kinds
    (back,) = [e for e in o.events if e["type"] == "rollout.rolled_back"]
    assert back["details"].get("failed_stage") == "canary" and "v1" in back["summary"], back
    assert not o.h.incidents(), o.h.incidents()  # the rollout owns its canary's failure, not a playbook
    # it really was failing: its health endpoint answered 500 to healerd's checks
    hits = o.h.health.hits.get(canary, [])
    assert hits and all(s == 500 for _, s in hits), hits


def check_the_rejected_version_is_recorded_and_known_good_stays_v1(rejected: Outcome) -> None:
    o = rejected
    assert o.images["known_good"] == "v1", o.images
    versions = o.versions()
    assert versions["v1"]["state"] == "known_good", versions
    assert versions["v2"]["state"] == "rejected", versions
    assert "failed probation" in versions["v2"]["reason"], versions["v2"]
    assert versions["v2"]["evidence"].get("rollout") == o.view["id"], versions["v2"]


def check_the_failed_canary_is_terminated_not_quarantined_and_never_served(rejected: Outcome) -> None:
    o, world = rejected, rejected.world
    (inst,) = world.launched_by_healerd()
    canary = inst["InstanceId"]
    tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
    assert tags.get("aws:ec2launchtemplate:version") == "2" and inst["InstanceType"] == TYPE_V2, tags
    assert tags.get("healerd:image") == f"{IMAGE}:v2", tags
    assert inst["State"]["Name"] in ("shutting-down", "terminated"), inst["State"]
    _not_quarantined(o, canary)
    _no_isolation_group(world)
    assert o.h.daemon.json("/api/v1/quarantine")["quarantined"] == []
    # it never entered rotation nor the group
    for op in ("elasticloadbalancing:RegisterTargets", "autoscaling:AttachInstances"):
        assert not [c for c in o.find(op) if canary in c.ids()], op
    assert canary not in world.targets()
    assert len(o.find("ec2:RunInstances")) == 1
    terminated = [c.ids() for c in o.find("ec2:TerminateInstances")]
    assert terminated == [{canary}], terminated


def check_the_v1_fleet_and_the_auto_scaling_group_are_untouched(rejected: Outcome) -> None:
    o, world = rejected, rejected.world
    group = world.group()
    assert sorted(i["InstanceId"] for i in group["Instances"]) == world.original, world.dump()
    assert group["DesiredCapacity"] == world.desired
    assert group["LaunchTemplate"]["Version"] == "1", group["LaunchTemplate"]
    assert not o.find("autoscaling:UpdateAutoScalingGroup")
    assert not o.find("autoscaling:DetachInstances") and not o.find("elasticloadbalancing:DeregisterTargets")
    targets = world.targets()
    assert sorted(targets) == world.original and set(targets.values()) == {"healthy"}, targets
    for iid in world.original:
        assert world.instance(iid)["State"]["Name"] == "running"
        assert o.machines[iid]["lifecycle"] == "in_service" and o.machines[iid]["up"], o.machines[iid]
    svc = o.h.daemon.service()
    assert svc["state"] == "optimal", svc


# ---------------------------------------------------------------------------------------------------------
# 3. The IAM policy covers every call a rollout made


def check_the_iam_policy_allows_every_operation_of_the_rollout(o: Outcome, expected: set[str]) -> None:
    policy = json.loads(POLICY.read_text())
    observed = unique(c.op for c in o.h.proxy.calls)
    print("\nAWS operations observed:", " ".join(observed))
    assert expected <= set(observed), observed
    denied = [op for op in observed if not allowing_statements(op, policy)]
    assert denied == [], f"operations healerd made that {POLICY.name} does not allow: {denied}"
    # every instance terminated carried, when the request was made, a tag a conditional statement asks for
    # (StringLike "*" on a tag key: the tag being there is enough); the tags it had then are replayed from the
    # CreateTags requests before it, on top of the ones it was launched with
    statements = allowing_statements("ec2:TerminateInstances", policy)
    required = [
        {key.removeprefix("ec2:ResourceTag/") for cond in st.get("Condition", {}).values() for key in cond}
        for st in statements
    ]
    assert all(keys and all(k.startswith("healerd:") for k in keys) for keys in required), required
    for c in o.find("ec2:TerminateInstances"):
        for iid in c.ids():
            tags = {k for k in o.world.tags(iid) if not k.startswith("healerd:")} | {
                v
                for t in o.calls
                if t.op == "ec2:CreateTags" and t.ts <= c.ts and t.status < 300 and iid in t.ids()
                for k, v in t.params.items()
                if k.startswith("Tag.") and k.endswith(".Key")
            }
            assert any(keys <= tags for keys in required), (
                f"TerminateInstances on {iid} (tags then {sorted(tags)}): no statement of {POLICY.name} allows it"
            )


def test_a_group_at_its_max_size_is_refused_before_anything_is_launched(
    hub: LoopThread, moto: Moto, tmp_path: Path
) -> None:
    """The canary joins the Auto Scaling group: a group already at MaxSize has no room, and says how to make it."""
    world = World(moto, max_size=3)
    proxy = AwsProxy(hub, moto.url, OBSERVED)
    health = NewcomersFail(hub)
    h = Healerd(world, proxy, health, tmp_path)
    h.config["images"][IMAGE]["rollout"] = rollout_config()
    write_config(h.config_path, h.config)
    try:
        _start(h)
        wait_until(lambda: h.daemon.service()["state"] == "optimal", 20, "the v1 fleet optimal", describe=h.describe)
        since = len(proxy.calls)
        status, body = h.daemon.post(f"/api/v1/services/{SERVICE}/rollout", {"version": "v2"})
        assert status == 409 and body["error"] == "no room for the rollout", body
        assert "MaxSize" in body["detail"] and "raise its MaxSize to 4" in body["detail"], body
        assert not [c for c in proxy.calls[since:] if c.op in ("ec2:RunInstances", "autoscaling:AttachInstances")]
        assert _rollout(h) is None  # nothing was recorded
    finally:
        unclean = h.stop()
        proxy.close()
        health.close()
    assert not unclean, unclean


# ---------------------------------------------------------------------------------------------------------
# The two scenarios, one test each (a module fixture is set up once per xdist worker that runs one of its tests)


def test_promoting_launch_template_version_2_refreshes_the_group(promoted: Outcome) -> None:
    check_the_rollout_goes_through_its_stages_to_completed(promoted)
    check_every_running_instance_was_launched_from_launch_template_version_2(promoted)
    check_every_v1_instance_is_terminated_not_quarantined(promoted)
    check_the_target_group_serves_exactly_the_new_machines(promoted)
    check_capacity_never_dropped_below_desired_nor_surged_above_one_extra(promoted)
    check_the_auto_scaling_group_holds_the_new_instances_and_launches_from_version_2(promoted)
    check_the_images_show_v2_known_good_and_v1_retired(promoted)
    check_exactly_desired_instances_were_launched_and_none_of_them_terminated(promoted)
    check_the_iam_policy_allows_every_operation_of_the_rollout(
        promoted,
        {
            "ec2:RunInstances",
            "ec2:CreateTags",
            "ec2:TerminateInstances",
            "autoscaling:AttachInstances",
            "autoscaling:DetachInstances",
            "autoscaling:UpdateAutoScalingGroup",
            "elasticloadbalancing:RegisterTargets",
            "elasticloadbalancing:DeregisterTargets",
        },
    )


def test_a_canary_failing_probation_rolls_back_and_leaves_the_group_as_it_was(rejected: Outcome) -> None:
    check_a_canary_failing_probation_rolls_the_rollout_back(rejected)
    check_the_rejected_version_is_recorded_and_known_good_stays_v1(rejected)
    check_the_failed_canary_is_terminated_not_quarantined_and_never_served(rejected)
    check_the_v1_fleet_and_the_auto_scaling_group_are_untouched(rejected)
    check_the_iam_policy_allows_every_operation_of_the_rollout(
        rejected, {"ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances"}
    )
