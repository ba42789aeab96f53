"""`aws` provider: EC2 machines discovered by Auto Scaling group or tags, quarantined the way AWS incident
response isolates an instance, replaced from the pinned known-good launch template version or AMI.

boto3 is synchronous: every call runs in a bounded thread pool, with botocore's adaptive retries (which
absorb throttling), and every AWS error becomes a ProviderError naming the call and the resource.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..machines import Lifecycle, Machine
from . import aws_group
from .aws_calls import AwsCalls
from .aws_isolation import AwsIsolation
from .aws_options import AwsOptions
from .aws_tags import (
    TAG_INCIDENT,
    TAG_MACHINE,
    TAG_RETIRED,
    TAG_SERVICE,
    tag_map,
)
from .base import ALL_VERBS, LaunchRequest, Provider, ProviderError

if TYPE_CHECKING:
    from ..specs import ServiceSpec


class LaunchTemplateRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str | None = None
    name: str | None = None
    version: str

    @model_validator(mode="after")
    def _pinned(self) -> LaunchTemplateRef:
        if (self.id is None) == (self.name is None):
            raise ValueError("give the launch template's id or its name (one of them)")
        if not self.version.isdigit():
            raise ValueError(f"pin a launch template version number, not {self.version!r} ($Latest/$Default drift)")
        return self


class AwsImage(BaseModel):
    """An image version: a pinned launch template version, or an AMI with launch parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    launch_template: LaunchTemplateRef | None = None
    ami: str | None = None
    instance_type: str | None = None
    subnet_id: str | None = None
    security_group_ids: list[str] = Field(default_factory=list)
    iam_instance_profile: str | None = None
    key_name: str | None = None
    user_data: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one(self) -> AwsImage:
        if (self.launch_template is None) == (self.ami is None):
            raise ValueError("give either launch_template: {id, version} or ami: (with instance_type)")
        if self.ami is not None and not self.instance_type:
            raise ValueError("an ami needs instance_type")
        return self


class AwsProvider(Provider):
    kind = "aws"
    Config = AwsOptions
    ImageVersion = AwsImage
    #: restart is a reboot here: healerd does not reach into the instance
    VERBS = ALL_VERBS

    def __init__(self, name: str, options: BaseModel, *, env: Any = None) -> None:
        super().__init__(name, options, env=env)
        self.api = AwsCalls(self.opts, name)
        self.calls = self.api.calls  # every AWS operation made (for the IAM policy check and the audit)
        self.isolation = AwsIsolation(self)
        self._subnet_zones: dict[str, str] = {}  # subnet id -> its Availability Zone (a subnet never moves)

    @property
    def opts(self) -> AwsOptions:
        assert isinstance(self.options, AwsOptions)
        return self.options

    async def call(self, service: str, operation: str, resource: str = "", **kwargs: Any) -> Any:
        """One AWS call in the pool; errors name the call and the resource."""
        return await self.api.call(service, operation, resource, **kwargs)

    async def close(self) -> None:
        self.api.close()

    # -- discovery ----------------------------------------------------------------------------------------
    def _machine(
        self, service: str, inst: dict[str, Any], lifecycle: Lifecycle = Lifecycle.IN_SERVICE, asg: str = ""
    ) -> Machine:
        ip = inst.get("PrivateIpAddress", "")
        address = f"{ip}:{self.opts.port}" if self.opts.port and ip else ip
        tags = tag_map(inst.get("Tags"))
        az = inst.get("Placement", {}).get("AvailabilityZone", "")
        attrs = {
            "instance_id": inst["InstanceId"],
            "private_ip": ip,
            "az": az,
            "zone": az,
            "image_id": inst.get("ImageId", ""),
            "launch_time": str(inst.get("LaunchTime", "")),
            "state": inst.get("State", {}).get("Name", ""),
            "tags": json.dumps(tags),
            "asg": asg or tags.get("aws:autoscaling:groupName", ""),
        }
        return Machine(service, inst["InstanceId"], address, lifecycle, attrs)

    async def describe_instances(
        self, ids: list[str] | None = None, filters: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {}
        if ids:
            kwargs["InstanceIds"] = ids
        if filters:
            kwargs["Filters"] = filters
        out = await self.call("ec2", "describe_instances", ",".join(ids or []) or "instances", **kwargs)
        return [i for r in out.get("Reservations", []) for i in r.get("Instances", [])]

    async def list_machines(self, service: ServiceSpec) -> list[Machine]:
        """Instances of the service: discovered ones, plus what healerd itself tracks in the store."""
        disc = service.discovery or {}
        known: dict[str, Machine] = {}
        if self.env is not None and self.env.store is not None:
            for m in await self.env.store.machines.load(service.name):
                if m.lifecycle not in (Lifecycle.RELEASED, Lifecycle.TERMINATED):
                    known[m.id] = m
        found: dict[str, Machine] = {}
        live = {"Name": "instance-state-name", "Values": ["pending", "running"]}
        if "asg" in disc:
            groups = await self.call(
                "autoscaling", "describe_auto_scaling_groups", disc["asg"], AutoScalingGroupNames=[disc["asg"]]
            )
            if not groups.get("AutoScalingGroups"):
                raise ProviderError(f"autoscaling:DescribeAutoScalingGroups: no group named {disc['asg']!r}")
            members = [
                i["InstanceId"]
                for i in groups["AutoScalingGroups"][0].get("Instances", [])
                if i.get("LifecycleState") in ("InService", "Pending", "Pending:Wait", "Pending:Proceed")
            ]
            if members:
                for inst in await self.describe_instances(members):
                    if inst.get("State", {}).get("Name") in ("pending", "running"):
                        found[inst["InstanceId"]] = self._machine(service.name, inst, asg=disc["asg"])
        if "tags" in disc:
            filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in disc["tags"].items()] + [live]
            for inst in await self.describe_instances(filters=filters):
                found.setdefault(inst["InstanceId"], self._machine(service.name, inst))
        out = dict(found)
        for mid, m in known.items():
            if mid in found:  # healerd's lifecycle (probation, quarantined) wins over discovery
                out[mid] = Machine(
                    m.service, m.id, found[mid].address, m.lifecycle, {**found[mid].attributes, **m.attributes}
                )
            else:
                out[mid] = m
        return list(out.values())

    # -- launch -------------------------------------------------------------------------------------------
    def zones(self, service: ServiceSpec) -> tuple[str, ...]:
        return tuple(self.opts.subnets)

    async def _subnet(self, request: LaunchRequest, spec: AwsImage) -> str | None:
        """The subnet of the zone healerd asks for (over the image's own `subnet_id`), checked to lie in that
        zone: a machine landing elsewhere would skew the spread and have healerd move machines without end."""
        if not request.zone:
            return spec.subnet_id
        option = f"providers.{self.name}.subnets"
        subnet = self.opts.subnets.get(request.zone)
        if subnet is None:
            raise ProviderError(
                f"aws: cannot launch {request.machine_id} in zone {request.zone!r}: it has no subnet; add it to "
                f"{option} (zones there: {', '.join(self.opts.subnets) or 'none'})"
            )
        az = self._subnet_zones.get(subnet)
        if az is None:
            out = await self.call("ec2", "describe_subnets", subnet, SubnetIds=[subnet])
            az = self._subnet_zones[subnet] = str((out.get("Subnets") or [{}])[0].get("AvailabilityZone", ""))
        if az != request.zone:
            raise ProviderError(
                f"aws: {subnet} ({option}.{request.zone}) is in {az or 'no known zone'}, not {request.zone}: "
                f"give {request.zone} a subnet of its own zone"
            )
        return subnet

    async def launch(self, request: LaunchRequest) -> Machine:
        spec = request.spec
        assert isinstance(spec, AwsImage)
        tag = request.incident or request.machine_id
        # Check the world first: an instance already launched for this incident (moto ignores ClientToken).
        existing = await self.describe_instances(
            filters=[
                {"Name": f"tag:{TAG_MACHINE}", "Values": [request.machine_id]},
                {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
            ]
        )
        if existing:
            inst = existing[0]
        else:
            tags = {
                **spec.tags,
                TAG_SERVICE: request.service,
                TAG_MACHINE: request.machine_id,
                "healerd:image": f"{request.image}:{request.version}",
            }
            if request.incident:
                tags[TAG_INCIDENT] = request.incident
            kwargs: dict[str, Any] = {
                "MinCount": 1,
                "MaxCount": 1,
                "ClientToken": f"healerd-{tag}"[:64],
                "TagSpecifications": [
                    {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
                ],
            }
            if spec.launch_template is not None:
                lt = {"Version": spec.launch_template.version}
                lt["LaunchTemplateId" if spec.launch_template.id else "LaunchTemplateName"] = (
                    spec.launch_template.id or spec.launch_template.name or ""
                )
                kwargs["LaunchTemplate"] = lt
            else:
                kwargs["ImageId"] = spec.ami
                kwargs["InstanceType"] = spec.instance_type
            subnet = await self._subnet(request, spec)
            if subnet:
                kwargs["SubnetId"] = subnet
            if spec.security_group_ids:
                kwargs["SecurityGroupIds"] = spec.security_group_ids
            if spec.iam_instance_profile:
                kwargs["IamInstanceProfile"] = {"Name": spec.iam_instance_profile}
            if spec.key_name:
                kwargs["KeyName"] = spec.key_name
            if spec.user_data:
                kwargs["UserData"] = base64.b64encode(spec.user_data.encode()).decode()
            out = await self.call("ec2", "run_instances", f"{request.image}:{request.version}", **kwargs)
            inst = out["Instances"][0]
        instance_id = inst["InstanceId"]
        await self._wait_running(instance_id)
        fresh = (await self.describe_instances([instance_id]))[0]
        m = self._machine(request.service, fresh, Lifecycle.PROBATION)
        return Machine(m.service, m.id, m.address, m.lifecycle, {**m.attributes, "healerd_id": request.machine_id})

    async def _wait_running(self, instance_id: str) -> None:
        deadline = time.monotonic() + self.opts.launch_timeout
        while True:
            inst = (await self.describe_instances([instance_id]))[0]
            state = inst.get("State", {}).get("Name")
            if state == "running":
                status = await self.call("ec2", "describe_instance_status", instance_id, InstanceIds=[instance_id])
                st = status.get("InstanceStatuses", [])
                ok = not st or (
                    st[0].get("InstanceStatus", {}).get("Status") in ("ok", "not-applicable", None)
                    and st[0].get("SystemStatus", {}).get("Status") in ("ok", "not-applicable", None)
                )
                if ok:
                    return
            elif state in ("terminated", "shutting-down"):
                raise ProviderError(f"ec2:RunInstances: {instance_id} went {state} while starting")
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"ec2:DescribeInstanceStatus: {instance_id} not running and ok after {self.opts.launch_timeout:g}s"
                )
            await asyncio.sleep(2.0)

    async def alive(self, machine: Machine) -> bool:
        try:
            insts = await self.describe_instances([machine.id])
        except ProviderError:
            return False
        return bool(insts) and insts[0].get("State", {}).get("Name") in ("pending", "running")

    # -- quarantine and forensics: healerd/providers/aws_isolation.py --------------------------------------
    async def quarantine(self, machine: Machine, incident: str | None, freeze: bool = False) -> dict[str, Any]:
        return await self.isolation.quarantine(machine, incident, freeze)

    async def release(self, machine: Machine) -> None:
        await self.isolation.release(machine)

    async def describe(self, machine: Machine) -> dict[str, Any]:
        return await self.isolation.describe(machine)

    async def console(self, machine: Machine, limit: int = 1 << 20) -> str:
        return await self.isolation.console(machine, limit)

    async def store_evidence(self, bundle: Path, incident: str) -> list[str]:
        return await self.isolation.store_evidence(bundle, incident)

    async def on_in_service(self, machine: Machine, service: ServiceSpec) -> None:
        """A replacement that passed its checks joins the service's Auto Scaling group (desired back up)."""
        asg = (service.discovery or {}).get("asg")
        if not asg or not self.opts.quarantine.asg_decrement:
            return
        member = await self.call("autoscaling", "describe_auto_scaling_instances", machine.id, InstanceIds=[machine.id])
        if not member.get("AutoScalingInstances"):
            await self.call(
                "autoscaling",
                "attach_instances",
                f"{machine.id} to {asg}",
                InstanceIds=[machine.id],
                AutoScalingGroupName=asg,
            )

    async def rollout_problem(self, service: ServiceSpec, extra: int) -> str | None:
        """A machine entering service joins the Auto Scaling group: the group's MaxSize must leave room."""
        asg = (service.discovery or {}).get("asg")
        if not asg or not self.opts.quarantine.asg_decrement or extra <= 0:
            return None
        return await aws_group.room_problem(self.call, asg, extra)

    async def on_promoted(self, service: ServiceSpec, spec: BaseModel) -> None:
        """The Auto Scaling group's own launches use the promoted launch template version too."""
        asg = (service.discovery or {}).get("asg")
        lt = spec.launch_template if isinstance(spec, AwsImage) else None
        if asg and lt is not None:
            key = "LaunchTemplateId" if lt.id else "LaunchTemplateName"
            await aws_group.point_at(self.call, asg, {key: lt.id or lt.name or "", "Version": lt.version})

    async def terminate(self, machine: Machine) -> None:
        insts = await self.describe_instances([machine.id])
        if not insts or insts[0].get("State", {}).get("Name") in ("terminated", "shutting-down"):
            return
        await self.call(
            "ec2",
            "modify_instance_attribute",
            machine.id,
            InstanceId=machine.id,
            DisableApiTermination={"Value": False},
        )
        await self.call("ec2", "terminate_instances", machine.id, InstanceIds=[machine.id])

    async def reboot(self, machine: Machine) -> Machine:
        """RebootInstances: the same instance, id and address; EC2 reboots it within a few minutes."""
        await self.call("ec2", "reboot_instances", machine.id, InstanceIds=[machine.id])
        return machine

    async def restart(self, machine: Machine) -> Machine:
        return await self.reboot(machine)

    async def retire(self, machine: Machine) -> str:
        """Scale in: leave the Auto Scaling group with a decrement (or it launches one back), then terminate."""
        iid = machine.id
        insts = await self.describe_instances([iid])
        if not insts or insts[0].get("State", {}).get("Name") in ("terminated", "shutting-down"):
            return "terminated"
        await self.isolation.leave_group(machine, insts[0], "detach", decrement=True)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        await self.call("ec2", "create_tags", iid, Resources=[iid], Tags=[{"Key": TAG_RETIRED, "Value": stamp}])
        await self.call("ec2", "terminate_instances", iid, InstanceIds=[iid])
        return "terminated"
