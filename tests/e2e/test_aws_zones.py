"""Zones on AWS: the `aws` provider's zones are the Availability Zones of its `subnets` option, and healerd
spreads a service's instances across them, against moto (ThreadedMotoServer on loopback) through the recording
proxy of aws_fixtures.py.

* `spread`: a real `healerd run` fills an empty service of 3 from a launch template that names no subnet; the
  instances land one per zone, each in its zone's subnet, and the API shows each machine's zone.
* The provider on its own: a launch asked for a zone goes to that zone's subnet (over the image's `subnet_id`);
  a zone without a subnet, or a subnet of another zone, launches nothing and says which option to fix; without
  `subnets` a launch goes where the image says.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from healerd.providers.aws import AwsImage, AwsProvider
from healerd.providers.aws_options import AwsOptions
from healerd.providers.base import LaunchRequest, ProviderError

from .aws_fixtures import (
    REGION,
    TYPE_V1,
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
ZONES = [f"{REGION}a", f"{REGION}b", f"{REGION}c"]


@dataclass(frozen=True)
class Service:
    """A service as the provider sees it."""

    name: str
    machines: tuple[Any, ...] = ()
    discovery: dict[str, Any] | None = None


WEB = Service("web")

#: every AWS request made in this module (checked against the IAM policy by the last test)
OBSERVED: list[Call] = []


def zone_subnets(world: World) -> dict[str, str]:
    """A subnet per zone in the world's VPC: its own subnet (zone a), and one in each of zones b and c."""
    cidr = world.ec2.describe_vpcs(VpcIds=[world.vpc])["Vpcs"][0]["CidrBlock"]
    net = cidr.split(".")[1]
    subnets = {ZONES[0]: world.subnet}
    for i, zone in enumerate(ZONES[1:], start=2):
        made = world.ec2.create_subnet(VpcId=world.vpc, CidrBlock=f"10.{net}.{i}.0/24", AvailabilityZone=zone)
        subnets[zone] = made["Subnet"]["SubnetId"]
    return subnets


def zoned_template(world: World, tag: str) -> str:
    """A launch template that names no subnet (the zone's subnet is given at launch), tagging its instances."""
    image = world.ec2.describe_images()["Images"][0]["ImageId"]
    data = {
        "ImageId": image,
        "InstanceType": TYPE_V1,
        "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "e2e:zones", "Value": tag}]}],
    }
    made = world.ec2.create_launch_template(LaunchTemplateName=f"zoned-{tag}", LaunchTemplateData=data)
    return str(made["LaunchTemplate"]["LaunchTemplateId"])


# ---------------------------------------------------------------------------------------------------------
# A fleet of three, launched by healerd across three zones


@dataclass
class Spread:
    h: Healerd
    subnets: dict[str, str]
    machines: dict[str, dict[str, Any]]  # /api/v1/machines, by id, once three are in service
    instances: dict[str, dict[str, Any]]  # DescribeInstances, by id


@pytest.fixture(scope="module")
def spread(hub: LoopThread, moto: Moto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spread]:
    world = World(moto, desired=0)  # its Auto Scaling group stays empty: this service is not it
    proxy = AwsProxy(hub, moto.url, OBSERVED)
    health = HealthServer(hub)
    subnets = zone_subnets(world)
    h = Healerd(world, proxy, health, tmp_path_factory.mktemp("spread"), {"subnets": subnets})
    try:
        lt = zoned_template(world, world.name)
        h.config["images"]["web-lt"]["versions"] = {"v1": {"launch_template": {"id": lt, "version": "1"}}}
        # no instance yet: healerd launches the three
        h.config["services"]["web"].update(desired=3, discovery={"tags": {"e2e:zones": world.name}})
        write_config(h.config_path, h.config)
        h.start(wait="listening")

        def serving() -> dict[str, dict[str, Any]] | None:
            machines = {mid: m for mid, m in h.daemon.machines().items() if m["lifecycle"] == "in_service"}
            return machines if len(machines) == 3 else None

        machines = wait_until(serving, 60, "three machines in service", interval=0.2, describe=h.describe)
        found = world.ec2.describe_instances(Filters=[{"Name": "tag:e2e:zones", "Values": [world.name]}])
        instances = {i["InstanceId"]: i for r in found["Reservations"] for i in r["Instances"]}
        yield Spread(h, subnets, machines, instances)
    finally:
        unclean = h.stop()
        proxy.close()
        health.close()
    assert not unclean, unclean


def test_a_fleet_of_three_lands_one_instance_per_zone_each_in_its_zone_s_subnet(spread: Spread) -> None:
    assert len(spread.instances) == 3, spread.h.world.dump()
    placed = {
        iid: (i["Placement"]["AvailabilityZone"], i["SubnetId"], i["State"]["Name"])
        for iid, i in spread.instances.items()
    }
    assert sorted(placed.values()) == [(zone, spread.subnets[zone], "running") for zone in ZONES], placed
    # asked for in the order of the option: each RunInstances names the subnet of the zone with fewest machines
    launches = spread.h.proxy.find("ec2:RunInstances")
    assert [c.params.get("SubnetId") for c in launches] == [spread.subnets[z] for z in ZONES], launches


def test_the_api_shows_each_machine_s_zone(spread: Spread) -> None:
    assert set(spread.machines) == set(spread.instances)
    for iid, m in spread.machines.items():
        assert m["zone"] == spread.instances[iid]["Placement"]["AvailabilityZone"], m
    assert sorted(m["zone"] for m in spread.machines.values()) == ZONES


# ---------------------------------------------------------------------------------------------------------
# The provider on its own


@dataclass
class Aws:
    world: World
    proxy: AwsProxy
    subnets: dict[str, str]
    image: AwsImage  # an AMI whose own subnet_id is zone a's

    def provider(self, **options: Any) -> AwsProvider:
        opts = AwsOptions(region=REGION, endpoint_url=self.proxy.url, **options)
        return AwsProvider("prod", opts)

    def request(self, zone: str = "") -> LaunchRequest:
        return LaunchRequest("web", f"web-{uuid.uuid4().hex[:8]}", "web-ami", "v1", self.image, zone=zone)

    def launched(self, request: LaunchRequest) -> list[dict[str, Any]]:
        found = self.world.ec2.describe_instances(
            Filters=[{"Name": "tag:healerd:machine", "Values": [request.machine_id]}]
        )
        return [i for r in found["Reservations"] for i in r["Instances"]]


@pytest.fixture
def aws(hub: LoopThread, moto: Moto, monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    world = World(moto, desired=0)
    proxy = AwsProxy(hub, moto.url, OBSERVED)
    subnets = zone_subnets(world)
    ami = world.ec2.describe_images()["Images"][0]["ImageId"]
    image = AwsImage(ami=ami, instance_type=TYPE_V1, subnet_id=subnets[ZONES[0]], tags={"e2e:world": world.name})
    yield Aws(world, proxy, subnets, image)
    proxy.close()


@pytest.fixture
async def zoned(aws: Aws) -> AsyncIterator[AwsProvider]:
    provider = aws.provider(subnets=aws.subnets)
    yield provider
    await provider.close()


async def test_a_launch_asked_for_a_zone_goes_to_that_zone_s_subnet(aws: Aws, zoned: AwsProvider) -> None:
    assert zoned.zones(WEB) == tuple(ZONES)
    request = aws.request(ZONES[2])
    machine = await zoned.launch(request)
    (inst,) = aws.launched(request)
    assert (inst["SubnetId"], inst["Placement"]["AvailabilityZone"]) == (aws.subnets[ZONES[2]], ZONES[2])
    assert machine.id == inst["InstanceId"] and machine.zone == ZONES[2] and machine.attributes["az"] == ZONES[2]
    # the zone's subnet wins over the image's own subnet_id (zone a's)
    (run,) = aws.proxy.find("ec2:RunInstances")
    assert run.params["SubnetId"] == aws.subnets[ZONES[2]]


async def test_a_zone_without_a_subnet_launches_nothing_and_names_the_option(aws: Aws, zoned: AwsProvider) -> None:
    request = aws.request("us-east-1f")
    with pytest.raises(ProviderError) as info:
        await zoned.launch(request)
    message = str(info.value)
    assert "'us-east-1f'" in message and "providers.prod.subnets" in message, message
    assert aws.proxy.find("ec2:RunInstances") == [] and aws.launched(request) == []


async def test_a_subnet_of_another_zone_launches_nothing_and_names_both(aws: Aws) -> None:
    provider = aws.provider(subnets={ZONES[0]: aws.subnets[ZONES[0]], ZONES[1]: aws.subnets[ZONES[2]]})
    try:
        request = aws.request(ZONES[1])
        with pytest.raises(ProviderError) as info:
            await provider.launch(request)
        message = str(info.value)
        wrong = aws.subnets[ZONES[2]]
        assert f"{wrong} (providers.prod.subnets.{ZONES[1]}) is in {ZONES[2]}, not {ZONES[1]}" in message, message
        assert aws.proxy.find("ec2:RunInstances") == [] and aws.launched(request) == []
        # the right zone still launches
        machine = await provider.launch(aws.request(ZONES[0]))
        assert machine.zone == ZONES[0]
    finally:
        await provider.close()


async def test_without_subnets_there_are_no_zones_and_a_launch_goes_where_the_image_says(aws: Aws) -> None:
    provider = aws.provider()
    try:
        assert provider.zones(WEB) == ()
        request = aws.request()
        machine = await provider.launch(request)
        (inst,) = aws.launched(request)
        assert inst["SubnetId"] == aws.subnets[ZONES[0]] == aws.image.subnet_id
        # the zone is still known: the instance's Availability Zone
        assert machine.zone == ZONES[0]
        assert aws.proxy.find("ec2:DescribeSubnets") == []
    finally:
        await provider.close()


# ---------------------------------------------------------------------------------------------------------
# The IAM policy covers the calls zones add


def test_the_iam_policy_allows_every_operation_made_for_zones(spread: Spread) -> None:
    policy = json.loads(POLICY.read_text())
    observed = unique(c.op for c in OBSERVED)
    assert {"ec2:RunInstances", "ec2:DescribeSubnets"} <= set(observed), observed
    denied = [op for op in observed if not allowing_statements(op, policy)]
    assert denied == [], f"operations made for zones that {POLICY.name} does not allow: {denied}"
