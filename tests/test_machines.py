"""A machine's origin (healerd.machines): why healerd launched it, read from the `launched_for` attribute the
store keeps (an incident's id for an incident's replacement)."""

from __future__ import annotations

import pytest

from healerd.machines import Lifecycle, Machine, Origin, launched_at, launched_for


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


def test_what_healerd_records_on_a_machine_reads_back_typed_and_a_damaged_record_reads_as_unknown() -> None:
    recorded = Machine(
        "web",
        "web-1",
        "127.0.0.1:8080",
        Lifecycle.QUARANTINED,
        {
            "launched_at": "1700000000.5",
            "image_version": "v2",
            "incident": "01INC",
            "quarantined_at": "1700000100",
            "evidence": '{"snapshots": ["snap-1"]}',
            "retiring": "1",
            "retention_warned": "1700000200",
            "launched_for": "fill",
        },
    )
    assert (recorded.launch_time, recorded.quarantined_at) == (1700000000.5, 1700000100.0)
    assert (recorded.image_version, recorded.incident, recorded.origin) == ("v2", "01INC", Origin.FILL)
    assert recorded.evidence == {"snapshots": ["snap-1"]}
    assert recorded.retiring and recorded.retention_warned
    assert launched_at(recorded, now=5.0) == 1700000000.5

    # a record written by hand or cut short: nothing is invented, nothing raises
    damaged = Machine("web", "web-2", "127.0.0.1:8081", attributes={"launched_at": "soon", "evidence": "{not json"})
    assert damaged.launch_time is None and launched_at(damaged, now=5.0) == 5.0
    assert damaged.evidence == {} and damaged.quarantined_at is None
    assert damaged.image_version is None and damaged.incident is None
    assert not damaged.retiring and not damaged.retention_warned and damaged.origin is Origin.NONE
