"""A machine's origin (healerd.machines): why healerd launched it, read from the `launched_for` attribute the
store keeps (an incident's id for an incident's replacement)."""

from __future__ import annotations

import pytest

from healerd.machines import Lifecycle, Machine, Origin, launched_for


@pytest.mark.parametrize(
    ("attribute", "origin"),
    [("fill", Origin.FILL), ("release", Origin.RELEASE), ("01M8RJ5HBZR6TFHTFC", Origin.INCIDENT), ("", Origin.NONE)],
)
def test_the_origin_is_read_from_launched_for(attribute: str, origin: Origin) -> None:
    m = Machine("web", "web-1", "127.0.0.1:1", Lifecycle.PROBATION, {"launched_for": attribute})
    assert m.origin is origin
    assert launched_for(origin, attribute or None) == attribute  # and written back exactly as before


def test_a_machine_healerd_did_not_launch_has_no_origin() -> None:
    assert Machine("web", "web-1", "127.0.0.1:1").origin is Origin.NONE
