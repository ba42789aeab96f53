"""What a rollout asks of a service's Auto Scaling group: room for its extra machines, and its own launches
pointed at the known-good launch template version."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

#: AwsProvider.call: (service, operation, resource, **parameters) -> the answer
Call = Callable[..., Awaitable[Any]]


async def room_problem(call: Call, asg: str, extra: int) -> str | None:
    """Why the group cannot hold `extra` more machines (its MaxSize), or None."""
    groups = await call("autoscaling", "describe_auto_scaling_groups", asg, AutoScalingGroupNames=[asg])
    group = (groups.get("AutoScalingGroups") or [{}])[0]
    desired, most = int(group.get("DesiredCapacity", 0)), int(group.get("MaxSize", 0))
    if desired + extra <= most:
        return None
    return (
        f"the Auto Scaling group {asg} holds {desired} and allows at most {most} (MaxSize): the rollout needs room "
        f"for {extra} more; raise its MaxSize to {desired + extra}, or roll out with fewer extra machines "
        "(--canary 0, or max_surge 0 with max_unavailable 1)"
    )


async def point_at(call: Call, asg: str, template: dict[str, str]) -> None:
    """The group launches from `template` ({"LaunchTemplateId" or "LaunchTemplateName", "Version"}) from now on."""
    await call(
        "autoscaling",
        "update_auto_scaling_group",
        f"{asg} to {template['Version']}",
        AutoScalingGroupName=asg,
        LaunchTemplate=template,
    )
