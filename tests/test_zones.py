"""Zones, pure (healerd.zones): when a zone is down, when it is lost, when the monitor is suspect, and where
the next machine goes; and the `zone_loss` settings (healerd.config.zones)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from healerd.config import Config, ConfigError, load_config
from healerd.config.zones import OnReturn, ZoneLoss
from healerd.providers.local import LocalProvider
from healerd.providers.static import StaticProvider
from healerd.zones import ZoneCount, ZoneState, judge, needed, next_zone, spread, uneven, zone_state

T = 0.55


@pytest.mark.parametrize(
    ("machines", "bound"),
    [(1, 2), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (10, 6), (20, 11)],
)
def test_a_zone_is_down_at_55_percent_of_its_machines_and_never_for_one_machine(machines: int, bound: int) -> None:
    assert needed(machines, T) == bound
    assert zone_state(ZoneCount(machines, bound - 1, bound - 1), T) is ZoneState.HEALTHY
    expected = ZoneState.DOWN if machines >= 2 else ZoneState.HEALTHY
    assert zone_state(ZoneCount(machines, bound, bound), T) is expected


def test_a_zone_failing_together_waits_until_its_checks_say_down() -> None:
    assert zone_state(ZoneCount(2, 1, 2), T) is ZoneState.FAILING
    assert zone_state(ZoneCount(2, 2, 2), T) is ZoneState.DOWN
    assert zone_state(ZoneCount(1, 1, 1), T) is ZoneState.HEALTHY  # one machine: its own failure


def test_a_zone_down_while_the_others_are_healthy_is_lost() -> None:
    counts = {"a": ZoneCount(2, 2, 2), "b": ZoneCount(2), "c": ZoneCount(2, 0, 1)}
    verdict = judge(counts, T)
    assert verdict.lost == ("a",) and not verdict.suspect and not verdict.failing
    assert verdict.unhealthy == {"a"}
    assert verdict.detail(counts) == "a: 2 of 2 down, b: 0 of 2 down, c: 0 of 2 down"


def test_every_zone_unhealthy_at_once_makes_the_monitor_suspect_and_nothing_lost() -> None:
    verdict = judge({"a": ZoneCount(2, 2, 2), "b": ZoneCount(2, 2, 2), "c": ZoneCount(3, 1, 2)}, T)
    assert verdict.suspect and verdict.lost == ()


def test_two_zones_lost_while_a_third_is_healthy() -> None:
    verdict = judge({"a": ZoneCount(2, 2, 2), "b": ZoneCount(2, 2, 2), "c": ZoneCount(2)}, T)
    assert verdict.lost == ("a", "b") and not verdict.suspect


def test_one_zone_or_none_gives_no_verdict_the_service_s_own_guard_decides() -> None:
    assert judge({"a": ZoneCount(4, 4, 4)}, T).states == {}
    assert judge({}, T).lost == ()


def test_a_zone_failing_is_waited_for_while_a_threshold_of_100_percent_needs_all() -> None:
    verdict = judge({"a": ZoneCount(3, 1, 3), "b": ZoneCount(3)}, T)
    assert verdict.failing == ("a",) and verdict.lost == ()
    assert zone_state(ZoneCount(4, 3, 3), 1.0) is ZoneState.HEALTHY


def test_new_machines_go_to_the_emptiest_zone_never_to_an_avoided_one() -> None:
    zones = ("a", "b", "c")
    assert next_zone(zones, []) == "a"
    assert next_zone(zones, ["a", "b"]) == "c"
    assert next_zone(zones, ["a", "a", "b", "c"]) == "b"
    assert next_zone(zones, ["b", "c"], avoid={"a"}) == "b"
    assert next_zone(zones, [], avoid=set(zones)) == ""
    assert next_zone((), ["a"]) == ""
    assert spread(zones, ["a", "x", "a"]) == {"a": 2, "b": 0, "c": 0}


def test_a_spread_two_apart_is_uneven() -> None:
    zones = ("a", "b", "c")
    assert uneven(zones, ["b", "b", "b", "c", "c", "c"])
    assert not uneven(zones, ["a", "b", "b", "c", "c"])
    assert not uneven(zones, ["b", "b", "b", "c", "c", "c"], avoid={"a"})


def test_zone_loss_settings_default_to_55_percent_the_whole_share_and_retire() -> None:
    z = ZoneLoss()
    assert z.fraction == 0.55 and z.on_return is OnReturn.RETIRE
    assert z.surge(2, 6) == 2
    assert ZoneLoss(max_surge=1).surge(2, 6) == 1
    assert ZoneLoss(max_surge="50%").surge(4, 6) == 3
    assert ZoneLoss(max_surge=0).surge(2, 6) == 0


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"threshold": "0%"}, "between 1% and 100%"),
        ({"threshold": "3"}, "between 1% and 100%"),
        ({"max_surge": "many"}, "a whole number or a percentage"),
        ({"on_return": "keep"}, "'retire' or 'quarantine'"),
    ],
)
def test_bad_zone_loss_settings_are_named(fields: dict[str, str], expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        ZoneLoss.model_validate(fields)


MANAGED = """\
daemon: {{listen: "127.0.0.1:19464", state_dir: ./state}}
providers:
  lab: {{kind: local, zones: [a, b, c], hosts: {hosts}}}
images:
  app: {{provider: lab, versions: {{v1: {{command: [app, "{{port}}", "{{zone}}"]}}}}, known_good: v1}}
services:
  web:
    provider: lab
    image: app
    desired: 6
    checks: [{{name: up, kind: tcp, interval: 1s, timeout: 500ms}}]
    remediation: {{zone_loss: {zone_loss}}}
"""


def load(
    tmp_path: Path, hosts: str = "{a: 127.0.0.2}", zone_loss: str = "{threshold: 60%, on_return: quarantine}"
) -> Config:
    path = tmp_path / "healerd.yaml"
    path.write_text(MANAGED.format(hosts=hosts, zone_loss=zone_loss))
    return load_config(path)


def test_a_config_with_zones_loads_and_the_local_provider_places_machines_by_zone(tmp_path: Path) -> None:
    config = load(tmp_path)
    web = config.services["web"]
    assert web.remediation.zone_loss.fraction == 0.6
    assert web.remediation.zone_loss.on_return is OnReturn.QUARANTINE
    provider = LocalProvider("lab", config.providers["lab"].options)
    assert provider.zones(web) == ("a", "b", "c")
    address, attrs = provider.allocate(set(), "a")
    assert address.startswith("127.0.0.2:") and attrs["zone"] == "a"
    address, attrs = provider.allocate(set(), "b")
    assert address.startswith("127.0.0.1:") and attrs["zone"] == "b"


@pytest.mark.parametrize(
    ("hosts", "zone_loss", "expected"),
    [
        ("{d: 127.0.0.2}", "{}", "hosts names zone(s) d missing from zones"),
        ("{}", "{threshold: 120%}", "services.web.remediation.zone_loss.threshold"),
        ("{}", "{on_return: keep}", "services.web.remediation.zone_loss.on_return"),
    ],
)
def test_zone_mistakes_are_named_with_their_path(tmp_path: Path, hosts: str, zone_loss: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, hosts, zone_loss)
    assert expected in str(err.value)


async def test_a_static_machine_stands_in_the_zone_its_config_names(tmp_path: Path) -> None:
    path = tmp_path / "healerd.yaml"
    path.write_text(
        """\
daemon: {listen: "127.0.0.1:19464", state_dir: ./state}
providers: {lab: {kind: static}}
services:
  db:
    provider: lab
    machines:
      - {id: db-1, address: "10.0.1.5:5432", zone: dc1}
      - {id: db-2, address: "10.0.2.5:5432"}
    checks: [{name: up, kind: tcp, interval: 1s, timeout: 500ms}]
"""
    )
    config = load_config(path)
    listed = await StaticProvider("lab", config.providers["lab"].options).list_machines(config.services["db"])
    assert {m.id: m.zone for m in listed} == {"db-1": "dc1", "db-2": ""}
