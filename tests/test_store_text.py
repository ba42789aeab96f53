"""Text from outside made storable: NUL and control characters reach neither store raw (PostgreSQL refuses NUL
in text and `\\u0000` in JSON it reads as jsonb); both stores hold and give back the same visible escapes."""

from __future__ import annotations

import json

from healerd.events import Event, EventType
from healerd.health import CheckKey
from healerd.machines import Lifecycle, Machine
from healerd.results import CheckResult, Status
from healerd.store.base import BaseStore
from healerd.store.text import printable, printable_parameters, to_json

NASTY = "a\x00b\x1b[31mc\x7fd"
SHOWN = "a\\x00b\\x1b[31mc\\x7fd"


def test_printable_escapes_control_characters_but_keeps_tabs_and_newlines() -> None:
    assert printable(NASTY) == SHOWN
    assert printable("line 1\n\tline 2\r\n") == "line 1\n\tline 2\r\n"
    plain = "nothing to do"
    assert printable(plain) is plain
    row = (1, "ok", None)
    assert printable_parameters(row) is row  # the common case costs no copy
    assert printable_parameters((1, "a\x00", 2.5)) == (1, "a\\x00", 2.5)
    assert printable_parameters({"k": "\x01"}) == {"k": "\\x01"}


def test_to_json_writes_the_same_escapes_and_leaves_an_escaped_backslash_alone() -> None:
    value = {"name": NASTY, "path": "C:\\u0000 is not a NUL", "n": 1}
    text = to_json(value)
    assert "\\u0000" not in text.replace("\\\\u0000", "") and "\x7f" not in text
    assert json.loads(text) == {"name": SHOWN, "path": "C:\\u0000 is not a NUL", "n": 1}
    assert to_json({"plain": "x"}) == '{"plain": "x"}'


async def test_both_stores_take_nul_and_control_characters_everywhere(store: BaseStore) -> None:
    key = CheckKey("web", "m1", "alert:" + NASTY)
    store.results.add(key, CheckResult(Status.CRITICAL, "firing: " + NASTY), 10.0)
    store.events.add(
        Event(EventType.MACHINE_UNHEALTHY, "web", "m1 down: " + NASTY, 10.0, machine="m1", details={"why": NASTY})
    )
    await store.flush()  # one transaction: refused whole on PostgreSQL before
    assert store.fault is None

    [stored] = (await store.results.history())[CheckKey("web", "m1", "alert:" + SHOWN)]
    assert stored[1].message == "firing: " + SHOWN
    [event] = await store.events.recent(service="web")
    assert event["summary"] == "m1 down: " + SHOWN and event["details"] == {"why": SHOWN}

    await store.silences.add("S1", "web", None, 0.0, 100.0, "maintenance " + NASTY, "ops\x00")
    [silence] = await store.silences.active(50.0)
    assert silence["comment"] == "maintenance " + SHOWN

    # a provider's attributes: JSON that PostgreSQL reads as jsonb when it looks for a replacement's incident
    machine = Machine("web", "m2", "127.0.0.1:1", Lifecycle.IN_SERVICE, {"launched_for": "I1", "note": NASTY})
    await store.machines.save([machine], "lab", 10.0)
    [found] = await store.machines.for_incident("I1")
    assert found.attributes == {"launched_for": "I1", "note": SHOWN}
    assert store.fault is None
