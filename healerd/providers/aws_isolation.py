"""How the `aws` provider quarantines an instance and collects its evidence (AWS incident-response recipe):
termination protection, out of its Auto Scaling group, every ENI onto an isolation group (optionally via an
all-open group so tracked connections drop), snapshots of every volume, tags; release undoes the isolation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any, Protocol

from ..machines import Machine
from .aws_options import AwsOptions
from .aws_tags import (
    ISOLATION_TAG,
    TAG_INCIDENT,
    TAG_ORIGINAL_GROUPS,
    TAG_QUARANTINED,
    decode_groups,
    encode_groups,
    tag_map,
)
from .base import ProviderError


class AwsClient(Protocol):
    """What the quarantine half uses of the provider: its options and its AWS calls."""

    @property
    def opts(self) -> AwsOptions: ...

    async def call(self, service: str, operation: str, resource: str = "", **kwargs: Any) -> Any: ...

    async def describe_instances(
        self, ids: list[str] | None = None, filters: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]: ...


class AwsIsolation:
    """The quarantine and forensics half of the aws provider; calls AWS through the provider's client."""

    def __init__(self, aws: AwsClient) -> None:
        self.aws = aws

    async def leave_group(self, machine: Machine, inst: dict[str, Any], action: str, decrement: bool) -> str:
        """Take the instance out of its Auto Scaling group (`detach` or `standby`) unless it is out already;
        returns the group's name ('' when it is in none). Without `decrement` the group launches one back."""
        iid = machine.id
        asg = machine.attributes.get("asg") or tag_map(inst.get("Tags")).get("aws:autoscaling:groupName", "")
        if not asg:
            return ""
        groups = await self.aws.call("autoscaling", "describe_auto_scaling_instances", iid, InstanceIds=[iid])
        member = groups.get("AutoScalingInstances", [])
        if member and member[0].get("LifecycleState") not in ("Standby", "Detaching", "Detached"):
            operation, what = (
                ("enter_standby", f"{iid} in {asg}")
                if action == "standby"
                else (
                    "detach_instances",
                    f"{iid} from {asg}",
                )
            )
            await self.aws.call(
                "autoscaling",
                operation,
                what,
                InstanceIds=[iid],
                AutoScalingGroupName=asg,
                ShouldDecrementDesiredCapacity=decrement,
            )
        return asg

    # -- quarantine -----------------------------------------------------------------------------------------
    async def quarantine(self, machine: Machine, incident: str | None, freeze: bool = False) -> dict[str, Any]:
        q = self.aws.opts.quarantine
        iid = machine.id
        insts = await self.aws.describe_instances([iid])
        if not insts:
            raise ProviderError(f"ec2:DescribeInstances: {iid} not found")
        inst = insts[0]
        evidence: dict[str, Any] = {"instance_id": iid, "original_security_groups": {}, "snapshots": []}
        if q.termination_protection:
            await self.aws.call(
                "ec2", "modify_instance_attribute", iid, InstanceId=iid, DisableApiTermination={"Value": True}
            )
        asg = await self.leave_group(machine, inst, q.asg_action, q.asg_decrement)
        if asg:
            evidence["asg"] = {"name": asg, "action": q.asg_action}
        vpc = inst.get("VpcId", "")
        isolation = q.isolation_security_group or await self._isolation_group(vpc)
        ours = {isolation, *([await self._open_group(vpc)] if q.two_step else [])}
        enis = inst.get("NetworkInterfaces", [])
        current = {e["NetworkInterfaceId"]: [g["GroupId"] for g in e.get("Groups", [])] for e in enis}
        recorded = tag_map(inst.get("Tags")).get(TAG_ORIGINAL_GROUPS)
        if recorded:  # a re-run after a crash: the groups were recorded before anything changed
            originals = decode_groups(recorded)
        else:
            originals = {eid: groups for eid, groups in current.items() if not set(groups) <= ours}
            encoded = encode_groups(originals)
            if len(encoded) <= 256:  # an EC2 tag value holds 256 characters
                await self.aws.call(
                    "ec2", "create_tags", iid, Resources=[iid], Tags=[{"Key": TAG_ORIGINAL_GROUPS, "Value": encoded}]
                )
        evidence["original_security_groups"] = originals
        for eni in enis:
            eid = eni["NetworkInterfaceId"]
            if current[eid] == [isolation]:
                continue  # already isolated
            if q.two_step:
                open_group = await self._open_group(vpc)
                await self.aws.call(
                    "ec2", "modify_network_interface_attribute", eid, NetworkInterfaceId=eid, Groups=[open_group]
                )
            await self.aws.call(
                "ec2", "modify_network_interface_attribute", eid, NetworkInterfaceId=eid, Groups=[isolation]
            )
        evidence["isolation_security_group"] = isolation
        tags = [{"Key": TAG_QUARANTINED, "Value": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
        if incident:
            tags.append({"Key": TAG_INCIDENT, "Value": incident})
        await self.aws.call("ec2", "create_tags", iid, Resources=[iid], Tags=tags)
        if q.snapshot:
            for bdm in inst.get("BlockDeviceMappings", []):
                vol = bdm.get("Ebs", {}).get("VolumeId")
                if not vol:
                    continue
                existing = await self.aws.call(
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
                snap = await self.aws.call(
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
        found = await self.aws.call(
            "ec2",
            "describe_security_groups",
            f"{name} in {vpc}",
            Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "group-name", "Values": [name]}],
        )
        if found.get("SecurityGroups"):
            return str(found["SecurityGroups"][0]["GroupId"])
        created = await self.aws.call(
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
            await self.aws.call("ec2", "authorize_security_group_ingress", gid, GroupId=gid, IpPermissions=everything)
        else:  # a new group allows all egress by default: remove it, so nothing goes out or in
            await self.aws.call("ec2", "revoke_security_group_egress", gid, GroupId=gid, IpPermissions=everything)
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
        evidence = machine.evidence
        for eid, groups in evidence.get("original_security_groups", {}).items():
            if groups:
                await self.aws.call(
                    "ec2", "modify_network_interface_attribute", eid, NetworkInterfaceId=eid, Groups=groups
                )
        await self.aws.call(
            "ec2",
            "modify_instance_attribute",
            machine.id,
            InstanceId=machine.id,
            DisableApiTermination={"Value": False},
        )
        await self.aws.call(
            "ec2",
            "delete_tags",
            machine.id,
            Resources=[machine.id],
            Tags=[{"Key": TAG_QUARANTINED}, {"Key": TAG_ORIGINAL_GROUPS}],
        )
        asg = evidence.get("asg", {})
        if asg.get("name"):
            back = "exit_standby" if asg.get("action") == "standby" else "attach_instances"
            group = asg["name"]
            await self.aws.call("autoscaling", back, machine.id, InstanceIds=[machine.id], AutoScalingGroupName=group)

    # -- forensics ------------------------------------------------------------------------------------------
    async def describe(self, machine: Machine) -> dict[str, Any]:
        insts = await self.aws.describe_instances([machine.id])
        volumes: list[dict[str, Any]] = []
        if insts:
            vol_ids = [b["Ebs"]["VolumeId"] for b in insts[0].get("BlockDeviceMappings", []) if "Ebs" in b]
            if vol_ids:
                volumes = (await self.aws.call("ec2", "describe_volumes", ",".join(vol_ids), VolumeIds=vol_ids)).get(
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
            out = await self.aws.call("ec2", "get_console_output", machine.id, InstanceId=machine.id, Latest=True)
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
        s3 = self.aws.opts.s3
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
            await self.aws.call(
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
