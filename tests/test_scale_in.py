"""Which machine scale-in retires first (healerd.remediation.fleet.retirement_order): machines not on the known-good
version, then the newest; a fleet on one version keeps its longest-proven machines."""

from __future__ import annotations

from healerd.machines import Lifecycle, Machine
from healerd.remediation.fleet import retirement_order


def machine(mid: str, version: str | None, launched_at: float) -> Machine:
    attrs = {"launched_at": str(launched_at)} | ({"image_version": version} if version else {})
    return Machine("web", mid, f"127.0.0.1:{20000 + int(launched_at)}", Lifecycle.IN_SERVICE, attrs)


def order(machines: list[Machine], known_good: str | None) -> list[str]:
    return [m.id for m in retirement_order(machines, known_good)]


def test_a_machine_released_back_on_an_old_version_goes_before_the_newest_known_good_one() -> None:
    # v1 machine released from quarantine to rotation (launched long ago) while v2 is known-good and the
    # replacement launched for it (v2) is the newest machine
    fleet = [
        machine("web-released", "v1", 100),
        machine("web-a", "v2", 500),
        machine("web-b", "v2", 510),
        machine("web-replacement", "v2", 900),
    ]
    assert order(fleet, "v2") == ["web-released", "web-replacement", "web-b", "web-a"]


def test_on_one_version_the_newest_goes_first() -> None:
    fleet = [machine("web-a", "v1", 100), machine("web-c", "v1", 300), machine("web-b", "v1", 200)]
    assert order(fleet, "v1") == ["web-c", "web-b", "web-a"]


def test_among_machines_off_the_known_good_version_the_newest_goes_first() -> None:
    fleet = [machine("web-v1", "v1", 100), machine("web-v0", "v0", 50), machine("web-v3", "v3", 300)]
    fleet.append(machine("web-good", "v2", 1000))
    assert order(fleet, "v2") == ["web-v3", "web-v1", "web-v0", "web-good"]


def test_a_machine_whose_version_is_not_recorded_is_not_vouched_for() -> None:
    fleet = [machine("web-good", "v2", 900), machine("web-adopted", None, 100)]
    assert order(fleet, "v2") == ["web-adopted", "web-good"]


def test_without_an_image_only_age_counts() -> None:
    fleet = [machine("web-old", None, 100), machine("web-new", "v1", 200)]
    assert order(fleet, None) == ["web-new", "web-old"]


def test_machines_launched_in_the_same_second_are_ordered_by_id() -> None:
    fleet = [machine("web-a", "v1", 100), machine("web-b", "v1", 100)]
    assert order(fleet, "v1") == order(list(reversed(fleet)), "v1") == ["web-b", "web-a"]


def test_on_one_version_a_machine_of_the_fullest_zone_goes_first_so_the_spread_evens_out() -> None:
    def zoned(mid: str, zone: str, launched_at: float) -> Machine:
        m = machine(mid, "v1", launched_at)
        return Machine(m.service, m.id, m.address, m.lifecycle, {**m.attributes, "zone": zone})

    # after zone a returned: a rebalancing machine launched in a, the newest; b holds three
    fleet = [zoned("b-1", "b", 100), zoned("b-2", "b", 200), zoned("b-3", "b", 300), zoned("c-1", "c", 400)]
    fleet += [zoned("c-2", "c", 500), zoned("a-1", "a", 900)]
    assert order(fleet, "v1")[0] == "b-3"
    fleet.append(machine("stale", "v0", 50))  # off the known-good version: first, whatever its zone
    assert order(fleet, "v1")[0] == "stale"
