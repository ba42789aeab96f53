"""The `aws` provider's `subnets` option as a user meets it: a config that cannot place machines in their zone is
refused, naming the key and the fix; a good one gives the provider its zones, in the order written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from healerd.config import ConfigError, load_config
from healerd.providers.aws import AwsProvider
from healerd.providers.aws_options import AwsOptions

CONFIG = """\
daemon:
  state_dir: ./state
providers:
  prod:
    kind: aws
    region: eu-west-1
    subnets: SUBNETS
images:
  web-lt:
    provider: prod
    versions:
      v1: {launch_template: {id: lt-0abc, version: "1"}}
    known_good: v1
services:
  web:
    provider: prod
    image: web-lt
    desired: 3
    discovery: {tags: {Service: web}}
"""


def load(tmp_path: Path, subnets: str) -> AwsOptions:
    path = tmp_path / "healerd.yaml"
    path.write_text(CONFIG.replace("SUBNETS", subnets))
    options = load_config(path).providers["prod"].options
    assert isinstance(options, AwsOptions)
    return options


@dataclass(frozen=True)
class Service:
    name: str = "web"
    machines: tuple[Any, ...] = ()
    discovery: dict[str, Any] | None = None


async def test_subnets_give_the_provider_its_zones_in_the_order_written(tmp_path: Path) -> None:
    options = load(tmp_path, "{eu-west-1c: subnet-0ccc, eu-west-1a: subnet-0aaa, eu-west-1b: subnet-0bbb}")
    provider = AwsProvider("prod", options)
    try:
        assert provider.zones(Service()) == ("eu-west-1c", "eu-west-1a", "eu-west-1b")
    finally:
        await provider.close()


async def test_without_subnets_the_provider_has_no_zones(tmp_path: Path) -> None:
    path = tmp_path / "healerd.yaml"
    path.write_text(CONFIG.replace("    subnets: SUBNETS\n", ""))
    provider = AwsProvider("prod", load_config(path).providers["prod"].options)
    try:
        assert provider.zones(Service()) == ()
    finally:
        await provider.close()


@pytest.mark.parametrize(
    ("subnets", "hint"),
    [
        ("{'': subnet-0aaa}", "an Availability Zone name is empty: key each subnet by its zone, as in subnets: {"),
        ("{eu-west-1a: ''}", "zone 'eu-west-1a' has '': give the id of a subnet in eu-west-1a (subnet-...)"),
        ("{eu-west-1a: sg-0aaa}", "zone 'eu-west-1a' has 'sg-0aaa': give the id of a subnet in eu-west-1a"),
        ("{eu-west-1a: subnet-}", "zone 'eu-west-1a' has 'subnet-': give the id of a subnet in eu-west-1a"),
        (
            "{eu-west-1a: subnet-0aaa, eu-west-1b: subnet-0aaa}",
            "zones 'eu-west-1a' and 'eu-west-1b' both have subnet-0aaa: a subnet lies in one zone",
        ),
        ("[subnet-0aaa, subnet-0bbb]", "expected a mapping (key: value), got a list"),
    ],
    ids=["empty-zone", "empty-subnet", "not-a-subnet", "bare-prefix", "shared-subnet", "a-list"],
)
def test_subnets_that_cannot_place_a_machine_are_refused_naming_the_key_and_the_fix(
    tmp_path: Path, subnets: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, subnets)
    rendered = info.value.render()
    lines = [line for line in rendered.splitlines() if "healerd.yaml:7: providers.prod.subnets: " in line]
    assert len(lines) == 1 and hint in lines[0], rendered
