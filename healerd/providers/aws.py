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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..durations import parse_duration
from ..machines import Lifecycle, Machine
from .base import LaunchRequest, Provider, ProviderError, ProviderOptions

if TYPE_CHECKING:
    from ..config import ServiceConfig

TAG_QUARANTINED = "healerd:quarantined"
TAG_INCIDENT = "healerd:incident"
TAG_SERVICE = "healerd:service"
TAG_MACHINE = "healerd:machine"
ISOLATION_TAG = "healerd:isolation"
TAG_RETIRED = "healerd:retired"  # a healthy surplus instance scaled in (the IAM policy lets healerd end it)
TAG_ORIGINAL_GROUPS = "healerd:original-groups"  # eni=sg,sg;eni=sg - recorded before isolating


class QuarantineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    asg_action: Literal["detach", "standby"] = "detach"
    # healerd launches the replacement itself: decrementing keeps the group from launching a second one
    # from *its* template; the replacement is attached (desired back up) once it is in service.
    asg_decrement: bool = True
    isolation_security_group: str | None = None  # default: created per VPC, no ingress, no egress
    two_step: bool = False  # first an all-open group (existing flows become untracked), then the isolation one
    snapshot: bool = True
    termination_protection: bool = True


class S3Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    bucket: str
    prefix: str = "healerd/forensics/"
    sse: Literal["AES256", "aws:kms"] | None = "AES256"
    kms_key_id: str | None = None


class AwsOptions(ProviderOptions):
    region: str
    profile: str | None = None
    role_arn: str | None = None
    endpoint_url: str | None = None
    max_workers: int = Field(default=8, ge=1, le=64)
    max_attempts: int = Field(default=10, ge=1, le=50)  # botocore retries, adaptive mode
    port: int | None = Field(default=None, ge=1, le=65535)  # machine address = private IP[:port]
    launch_timeout: float = 600.0
    drain_timeout: float = 300.0
    quarantine: QuarantineOptions = Field(default_factory=QuarantineOptions)
    s3: S3Options | None = None

    @field_validator("launch_timeout", "drain_timeout", mode="before")
    @classmethod
    def _durations(cls, v: object) -> float:
        return parse_duration(v)


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


def _tags(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in items or []}


class AwsProvider(Provider):
    kind = "aws"
    Config = AwsOptions
    ImageVersion = AwsImage

    def __init__(self, name: str, options: BaseModel, env: Any = None) -> None:
        super().__init__(name, options, env)
        self._pool = ThreadPoolExecutor(max_workers=self.opts.max_workers, thread_name_prefix=f"healerd-aws-{name}")
        self._clients: dict[str, Any] = {}
        self.calls: list[str] = []  # every AWS operation made (for the IAM policy check and the audit)

    @property
    def opts(self) -> AwsOptions:
        assert isinstance(self.options, AwsOptions)
        return self.options

    # -- clients ------------------------------------------------------------------------------------------
    def _session(self) -> Any:
        import boto3

        session = boto3.session.Session(profile_name=self.opts.profile, region_name=self.opts.region)
        if self.opts.role_arn:
            sts = session.client("sts", endpoint_url=self.opts.endpoint_url)
            creds = sts.assume_role(RoleArn=self.opts.role_arn, RoleSessionName="healerd")["Credentials"]
            session = boto3.session.Session(
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"],
                region_name=self.opts.region,
            )
        return session

    def client(self, service: str) -> Any:
        client = self._clients.get(service)
        if client is None:
            from botocore.config import Config as BotoConfig

            cfg = BotoConfig(
                retries={"mode": "adaptive", "max_attempts": self.opts.max_attempts},
                connect_timeout=10,
                read_timeout=30,
                max_pool_connections=self.opts.max_workers,
            )
            client = self._session().client(service, endpoint_url=self.opts.endpoint_url, config=cfg)
            client.meta.events.register("before-call", self._record_call)
            self._clients[service] = client
        return client

    def _record_call(self, model: Any = None, **_: Any) -> None:
        if model is not None:
            self.calls.append(f"{model.service_model.signing_name}:{model.name}")

    async def call(self, service: str, operation: str, resource: str = "", **kwargs: Any) -> Any:
        """One AWS call in the pool; errors name the call and the resource."""
        from botocore.exceptions import BotoCoreError, ClientError

        def run() -> Any:
            return getattr(self.client(service), operation)(**kwargs)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, run)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            action = f"{service}:{_camel(operation)}"
            raise ProviderError(
                f"{action} on {resource or 'the account'} failed: {err.get('Code', 'Error')}: {err.get('Message', '')}"
            ) from None
        except BotoCoreError as exc:
            raise ProviderError(f"{service}:{_camel(operation)} on {resource or 'the account'} failed: {exc}") from None

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- discovery ----------------------------------------------------------------------------------------
    def _machine(
        self, service: str, inst: dict[str, Any], lifecycle: Lifecycle = Lifecycle.IN_SERVICE, asg: str = ""
    ) -> Machine:
        ip = inst.get("PrivateIpAddress", "")
        address = f"{ip}:{self.opts.port}" if self.opts.port and ip else ip
        tags = _tags(inst.get("Tags"))
        attrs = {
            "instance_id": inst["InstanceId"],
            "private_ip": ip,
            "az": inst.get("Placement", {}).get("AvailabilityZone", ""),
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

    async def list_machines(self, service: ServiceConfig) -> list[Machine]:
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
            if spec.subnet_id:
                kwargs["SubnetId"] = spec.subnet_id
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

    # -- quarantine -----------------------------------------------------------------------------------------
    async def quarantine(self, machine: Machine, incident: str | None, freeze: bool = False) -> dict[str, Any]:
        q = self.opts.quarantine
        iid = machine.id
        insts = await self.describe_instances([iid])
        if not insts:
            raise ProviderError(f"ec2:DescribeInstances: {iid} not found")
        inst = insts[0]
        evidence: dict[str, Any] = {"instance_id": iid, "original_security_groups": {}, "snapshots": []}
        if q.termination_protection:
            await self.call(
                "ec2", "modify_instance_attribute", iid, InstanceId=iid, DisableApiTermination={"Value": True}
            )
        asg = machine.attributes.get("asg") or _tags(inst.get("Tags")).get("aws:autoscaling:groupName", "")
        if asg:
            groups = await self.call("autoscaling", "describe_auto_scaling_instances", iid, InstanceIds=[iid])
            member = groups.get("AutoScalingInstances", [])
            if member and member[0].get("LifecycleState") not in ("Standby", "Detaching", "Detached"):
                if q.asg_action == "standby":
                    await self.call(
                        "autoscaling",
                        "enter_standby",
                        f"{iid} in {asg}",
                        InstanceIds=[iid],
                        AutoScalingGroupName=asg,
                        ShouldDecrementDesiredCapacity=q.asg_decrement,
                    )
                else:
                    await self.call(
                        "autoscaling",
                        "detach_instances",
                        f"{iid} from {asg}",
                        InstanceIds=[iid],
                        AutoScalingGroupName=asg,
                        ShouldDecrementDesiredCapacity=q.asg_decrement,
                    )
            evidence["asg"] = {"name": asg, "action": q.asg_action}
        vpc = inst.get("VpcId", "")
        isolation = q.isolation_security_group or await self._isolation_group(vpc)
        ours = {isolation, *([await self._open_group(vpc)] if q.two_step else [])}
        enis = inst.get("NetworkInterfaces", [])
        current = {e["NetworkInterfaceId"]: [g["GroupId"] for g in e.get("Groups", [])] for e in enis}
        recorded = _tags(inst.get("Tags")).get(TAG_ORIGINAL_GROUPS)
        if recorded:  # a re-run after a crash: the groups were recorded before anything changed
            originals = _decode_groups(recorded)
        else:
            originals = {eid: groups for eid, groups in current.items() if not set(groups) <= ours}
            encoded = _encode_groups(originals)
            if len(encoded) <= 256:  # an EC2 tag value holds 256 characters
                await self.call(
                    "ec2", "create_tags", iid, Resources=[iid], Tags=[{"Key": TAG_ORIGINAL_GROUPS, "Value": encoded}]
                )
        evidence["original_security_groups"] = originals
        for eni in enis:
            eid = eni["NetworkInterfaceId"]
            if current[eid] == [isolation]:
                continue  # already isolated
            if q.two_step:
                open_group = await self._open_group(vpc)
                await self.call(
                    "ec2", "modify_network_interface_attribute", eid, NetworkInterfaceId=eid, Groups=[open_group]
                )
            await self.call(
                "ec2", "modify_network_interface_attribute", eid, NetworkInterfaceId=eid, Groups=[isolation]
            )
        evidence["isolation_security_group"] = isolation
        tags = [{"Key": TAG_QUARANTINED, "Value": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
        if incident:
            tags.append({"Key": TAG_INCIDENT, "Value": incident})
        await self.call("ec2", "create_tags", iid, Resources=[iid], Tags=tags)
        if q.snapshot:
            for bdm in inst.get("BlockDeviceMappings", []):
                vol = bdm.get("Ebs", {}).get("VolumeId")
                if not vol:
                    continue
                existing = await self.call(
                    "ec2",
                    "describe_snapshots",
                    vol,
                    OwnerIds=["self"],
                    Filters=[
                        {"Name": "volume-id", "Values": [vol]},
                        {"Name": f"tag:{TAG_INCIDENT}", "Values": [incident or "-"]},
                    ],
                )
                if existing.get("Snapshots"):
                    evidence["snapshots"].append(existing["Snapshots"][0]["SnapshotId"])
                    continue
                snap = await self.call(
                    "ec2",
                    "create_snapshot",
                    vol,
                    VolumeId=vol,
                    Description=f"healerd forensics of {iid} ({bdm.get('DeviceName', '')}) incident {incident}",
                    TagSpecifications=[
                        {
                            "ResourceType": "snapshot",
                            "Tags": [
                                {"Key": TAG_INCIDENT, "Value": incident or "-"},
                                {"Key": "healerd:instance", "Value": iid},
                                {"Key": "healerd:device", "Value": bdm.get("DeviceName", "")},
                            ],
                        }
                    ],
                )
                evidence["snapshots"].append(snap["SnapshotId"])
        return evidence

    async def _group(self, vpc: str, name: str, description: str, open_all: bool) -> str:
        found = await self.call(
            "ec2",
            "describe_security_groups",
            f"{name} in {vpc}",
            Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "group-name", "Values": [name]}],
        )
        if found.get("SecurityGroups"):
            return str(found["SecurityGroups"][0]["GroupId"])
        created = await self.call(
            "ec2",
            "create_security_group",
            f"{name} in {vpc}",
            GroupName=name,
            Description=description,
            VpcId=vpc,
            TagSpecifications=[
                {
                    "ResourceType": "security-group",
                    "Tags": [{"Key": ISOLATION_TAG, "Value": "open" if open_all else "isolated"}],
                }
            ],
        )
        gid = str(created["GroupId"])
        everything = [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
        if open_all:
            await self.call("ec2", "authorize_security_group_ingress", gid, GroupId=gid, IpPermissions=everything)
        else:  # a new group allows all egress by default: remove it, so nothing goes out or in
            await self.call("ec2", "revoke_security_group_egress", gid, GroupId=gid, IpPermissions=everything)
        return gid

    async def _isolation_group(self, vpc: str) -> str:
        return await self._group(vpc, "healerd-isolation", "healerd quarantine: no ingress, no egress", False)

    async def _open_group(self, vpc: str) -> str:
        return await self._group(
            vpc,
            "healerd-isolation-open",
            "healerd quarantine step 1: all open, so tracked flows become untracked",
            True,
        )

    async def release(self, machine: Machine) -> None:
        """Undo the isolation: original security groups back, protection off, back into its ASG."""
        evidence = json.loads(machine.attributes.get("evidence", "{}"))
        for eid, groups in evidence.get("original_security_groups", {}).items():
            if groups:
                await self.call("ec2", "modify_network_interface_attribute", eid, NetworkInterfaceId=eid, Groups=groups)
        await self.call(
            "ec2",
            "modify_instance_attribute",
            machine.id,
            InstanceId=machine.id,
            DisableApiTermination={"Value": False},
        )
        await self.call(
            "ec2",
            "delete_tags",
            machine.id,
            Resources=[machine.id],
            Tags=[{"Key": TAG_QUARANTINED}, {"Key": TAG_ORIGINAL_GROUPS}],
        )
        asg = evidence.get("asg", {})
        if asg.get("name"):
            if asg.get("action") == "standby":
                await self.call(
                    "autoscaling",
                    "exit_standby",
                    machine.id,
                    InstanceIds=[machine.id],
                    AutoScalingGroupName=asg["name"],
                )
            else:
                await self.call(
                    "autoscaling",
                    "attach_instances",
                    machine.id,
                    InstanceIds=[machine.id],
                    AutoScalingGroupName=asg["name"],
                )

    async def on_in_service(self, machine: Machine, service: ServiceConfig) -> None:
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

    async def retire(self, machine: Machine) -> str:
        """Scale in: leave the Auto Scaling group with a decrement (or it launches one back), then terminate."""
        iid = machine.id
        insts = await self.describe_instances([iid])
        if not insts or insts[0].get("State", {}).get("Name") in ("terminated", "shutting-down"):
            return "terminated"
        asg = machine.attributes.get("asg") or _tags(insts[0].get("Tags")).get("aws:autoscaling:groupName", "")
        if asg:
            groups = await self.call("autoscaling", "describe_auto_scaling_instances", iid, InstanceIds=[iid])
            member = groups.get("AutoScalingInstances", [])
            if member and member[0].get("LifecycleState") not in ("Detaching", "Detached"):
                await self.call(
                    "autoscaling",
                    "detach_instances",
                    f"{iid} from {asg}",
                    InstanceIds=[iid],
                    AutoScalingGroupName=asg,
                    ShouldDecrementDesiredCapacity=True,
                )
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        await self.call("ec2", "create_tags", iid, Resources=[iid], Tags=[{"Key": TAG_RETIRED, "Value": stamp}])
        await self.call("ec2", "terminate_instances", iid, InstanceIds=[iid])
        return "terminated"

    # -- forensics ------------------------------------------------------------------------------------------
    async def describe(self, machine: Machine) -> dict[str, Any]:
        insts = await self.describe_instances([machine.id])
        volumes: list[dict[str, Any]] = []
        if insts:
            vol_ids = [b["Ebs"]["VolumeId"] for b in insts[0].get("BlockDeviceMappings", []) if "Ebs" in b]
            if vol_ids:
                volumes = (await self.call("ec2", "describe_volumes", ",".join(vol_ids), VolumeIds=vol_ids)).get(
                    "Volumes", []
                )
        info: dict[str, Any] = json.loads(
            json.dumps(
                {
                    "instance": insts[0] if insts else None,
                    "volumes": volumes,
                    "healerd": {"id": machine.id, "address": machine.address, "attributes": machine.attributes},
                },
                default=str,
            )
        )
        return info

    async def console(self, machine: Machine, limit: int = 1 << 20) -> str:
        try:
            out = await self.call("ec2", "get_console_output", machine.id, InstanceId=machine.id, Latest=True)
        except ProviderError as exc:
            return f"(console output unavailable: {exc})\n"
        text = out.get("Output") or ""
        try:
            decoded = base64.b64decode(text).decode("utf-8", "replace") if text else ""
        except ValueError:
            decoded = text
        return decoded[-limit:]

    async def store_evidence(self, bundle: Path, incident: str) -> list[str]:
        """Mirror the bundle to S3 when configured; returns the object keys."""
        s3 = self.opts.s3
        if s3 is None:
            return []
        keys = []
        for path in await asyncio.to_thread(lambda: sorted(bundle.iterdir())):
            key = f"{s3.prefix.rstrip('/')}/{incident}/{path.name}"
            extra: dict[str, Any] = {}
            if s3.sse:
                extra["ServerSideEncryption"] = s3.sse
                if s3.sse == "aws:kms" and s3.kms_key_id:
                    extra["SSEKMSKeyId"] = s3.kms_key_id
            await self.call(
                "s3",
                "put_object",
                f"s3://{s3.bucket}/{key}",
                Bucket=s3.bucket,
                Key=key,
                Body=path.read_bytes(),
                **extra,
            )
            keys.append(key)
        return keys


def _encode_groups(groups: dict[str, list[str]]) -> str:
    return ";".join(f"{eni}={','.join(sgs)}" for eni, sgs in sorted(groups.items()))


def _decode_groups(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in text.split(";"):
        eni, _, sgs = part.partition("=")
        if eni:
            out[eni] = [g for g in sgs.split(",") if g]
    return out


def _camel(operation: str) -> str:
    return "".join(part.capitalize() for part in operation.split("_"))
