"""The API's input parsing: JSON bodies within limits, the body and query models, path ids."""

from __future__ import annotations

import json
from typing import Any

import pytest

from healerd.api_models import (
    MAX_BODY,
    MAX_DEPTH,
    EventsQuery,
    InputError,
    ModeChange,
    NoBody,
    NoQuery,
    NotificationsQuery,
    Release,
    Resolve,
    SilenceCreate,
    decode_json,
    parse_body,
    parse_query,
    path_value,
)
from healerd.config import Mode


def refused(call: Any, *args: Any) -> InputError:
    with pytest.raises(InputError) as info:
        call(*args)
    return info.value


# ---------------------------------------------------------------------------------------------------------
# JSON bodies


def test_an_empty_body_is_an_empty_object() -> None:
    assert decode_json(b"") == {}
    assert decode_json(b" \r\n") == {}


def test_nesting_is_capped_before_the_parser_recurses() -> None:
    assert decode_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    err = refused(decode_json, b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    assert (err.status, err.error) == (400, "body too deep")
    # deep enough to blow the interpreter's recursion limit, and still well under the size cap
    err = refused(decode_json, b'{"a":' * 10_000)
    assert (err.status, err.error) == (400, "body too deep")


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"comment": "[{" * 500 + '\\"[[' + "}]" * 3})
    assert decode_json(text.encode())["comment"].startswith("[{[{")
    # an escaped backslash ends the escape: the quote after it closes the string
    assert decode_json(b'{"a": "\\\\", "b": [[1]]}') == {"a": "\\", "b": [[1]]}


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"duration": NaN}', "NaN is not a JSON number"),
        (b'{"duration": Infinity}', "Infinity is not a JSON number"),
        (b'{"duration": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"mode": "auto"', "not valid JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"by": "\\ud800"}', "surrogate"),
        (b'{"timeout": ' + b"9" * 5000 + b"}", "too long"),
        (b"{'mode': 'auto'}", "not valid JSON"),
    ],
)
def test_bodies_that_are_not_plain_json_are_refused(raw: bytes, why: str) -> None:
    err = refused(decode_json, raw)
    assert err.status == 400
    assert why in err.detail


def test_a_body_over_the_cap_is_413() -> None:
    assert refused(decode_json, b" " * (MAX_BODY + 1)).status == 413
    assert decode_json(b" " * MAX_BODY) == {}


def test_the_body_must_be_an_object() -> None:
    for value in ([], "observe", 1, None, True):
        err = refused(parse_body, ModeChange, value)
        assert err.error == "bad body" and "JSON object" in err.detail


# ---------------------------------------------------------------------------------------------------------
# Bodies


@pytest.mark.parametrize(
    ("body", "mode"),
    [({"mode": "observe"}, Mode.OBSERVE), ({"mode": "dry-run"}, Mode.DRY_RUN), ({"mode": "auto"}, Mode.AUTO)],
)
def test_mode_change_takes_each_mode(body: dict[str, Any], mode: Mode) -> None:
    change = parse_body(ModeChange, body)
    assert change.mode is mode and change.changes_mode and not change.changes_paused


def test_mode_config_and_null_mean_back_to_the_config() -> None:
    for raw in ("config", None):
        change = parse_body(ModeChange, {"mode": raw, "service": "web"})
        assert change.mode is None and change.changes_mode and change.service == "web"


def test_pausing_is_a_bool_and_only_a_bool() -> None:
    change = parse_body(ModeChange, {"paused": False})
    assert change.changes_paused and change.paused is False and not change.changes_mode
    for raw in ("true", 1, None, [True]):
        assert refused(parse_body, ModeChange, {"paused": raw}).error == "bad paused"


@pytest.mark.parametrize(
    ("body", "error", "says"),
    [
        ({"mode": "fast"}, "bad mode", "observe, dry-run, auto"),
        ({"mode": ["auto"]}, "bad mode", "observe"),
        ({"mode": "auto", "service": ["web"]}, "bad service", "letters, digits"),
        ({"mode": "auto", "service": {"a": 1}}, "bad service", "letters, digits"),
        ({"mode": "auto", "service": "../etc"}, "bad service", "letters, digits"),
        ({"mode": "auto", "service": "w" * 201}, "bad service", "200"),
        ({"mode": "auto", "force": True}, "unknown body field", "'force'; it takes mode, service, paused"),
        ({}, "bad body", "nothing to change"),
        ({"service": "web"}, "bad body", "nothing to change"),
        ({"paused": True, "service": "web"}, "bad body", "daemon-wide"),
    ],
)
def test_mode_change_refusals_name_the_field(body: dict[str, Any], error: str, says: str) -> None:
    err = refused(parse_body, ModeChange, body)
    assert err.status == 400
    assert err.error == error
    assert says in err.detail


@pytest.mark.parametrize(
    ("duration", "seconds"), [("2h", 7200.0), (90, 90.0), (0.5, 0.5), ("30d", 30 * 86400.0), ("1ms", 0.001)]
)
def test_silence_durations(duration: object, seconds: float) -> None:
    assert parse_body(SilenceCreate, {"service": "web", "duration": duration}).duration == seconds


@pytest.mark.parametrize("duration", [0, "0s", -1, "31d", 30 * 86400 + 1, float("inf"), 10**400, True, "abc", None, []])
def test_silence_durations_refused(duration: object) -> None:
    err = refused(parse_body, SilenceCreate, {"service": "web", "duration": duration})
    assert err.error == "bad duration"
    assert "at most 30d" in err.detail


def test_a_silence_of_1e999_is_refused_not_endless() -> None:
    body = decode_json(b'{"service": "web", "duration": 1e999}')
    assert refused(parse_body, SilenceCreate, body).error == "bad duration"


def test_a_silence_needs_a_target_and_bounded_text() -> None:
    assert "needs a target" in refused(parse_body, SilenceCreate, {"duration": "1h"}).detail
    assert "needs a target" in refused(parse_body, SilenceCreate, {"service": None, "machine": None}).detail
    ok = parse_body(SilenceCreate, {"machine": "web-1", "comment": "c" * 1000, "created_by": "b" * 200})
    assert (ok.service, ok.machine, ok.duration) == (None, "web-1", 3600.0)
    assert refused(parse_body, SilenceCreate, {"machine": "web-1", "comment": "c" * 1001}).error == "bad comment"
    assert refused(parse_body, SilenceCreate, {"machine": "web-1", "created_by": "b" * 201}).error == "bad created_by"
    assert refused(parse_body, SilenceCreate, {"machine": "web-1", "comment": 5}).error == "bad comment"


def test_release_timeout_is_a_finite_duration_from_1s_to_1h() -> None:
    assert parse_body(Release, {}).timeout == 60.0
    assert parse_body(Release, {"timeout": "1s", "to_rotation": True}).timeout == 1.0
    assert parse_body(Release, {"timeout": "1h"}).timeout == 3600.0
    for raw in ("abc", 0.5, "61m", 1e308, "", {"s": 1}):
        err = refused(parse_body, Release, {"timeout": raw})
        assert err.error == "bad timeout" and "from 1s to 1h" in err.detail
    assert refused(parse_body, Release, {"to_rotation": "yes"}).error == "bad to_rotation"


def test_resolve_and_no_body() -> None:
    assert parse_body(Resolve, {}).by == ""
    assert refused(parse_body, Resolve, {"by": "x" * 201}).error == "bad by"
    assert parse_body(NoBody, {}) == NoBody()
    err = refused(parse_body, NoBody, {"force": True})
    assert err.error == "unknown body field" and "it takes none" in err.detail


# ---------------------------------------------------------------------------------------------------------
# Query strings


def test_limits_are_whole_numbers_within_the_cap() -> None:
    assert parse_query(EventsQuery, []).limit == 100
    assert parse_query(EventsQuery, [("limit", "1000")]).limit == 1000
    assert parse_query(NotificationsQuery, [("limit", "500")]).limit == 500
    for raw in ("-1", "0", "1001", "1e3", "5_0", " 5", "+5", "\u0665", "", "99999999999999"):
        err = refused(parse_query, EventsQuery, [("limit", raw)])
        assert err.error == "bad limit" and "from 1 to 1000" in err.detail
    assert "from 1 to 500" in refused(parse_query, NotificationsQuery, [("limit", "501")]).detail


def test_event_filters() -> None:
    query = parse_query(EventsQuery, [("type", "incident.opened,,machine.quarantined"), ("service", "web")])
    assert query.type == ("incident.opened", "machine.quarantined") and query.service == "web"
    assert refused(parse_query, EventsQuery, [("type", "a,../b")]).error == "bad type"
    assert refused(parse_query, EventsQuery, [("machine", "m" * 201)]).error == "bad machine"


def test_query_keys_are_known_and_given_once() -> None:
    err = refused(parse_query, EventsQuery, [("limt", "5")])
    assert err.error == "unknown query parameter" and "'limt'" in err.detail and "limit" in err.detail
    err = refused(parse_query, EventsQuery, [("limit", "5"), ("limit", "6")])
    assert "once" in err.detail
    assert "it takes none" in refused(parse_query, NoQuery, [("to_rotation", "1")]).detail


# ---------------------------------------------------------------------------------------------------------
# Path ids


@pytest.mark.parametrize("value", ["../../etc", "..", ".", "a/b", "x" * 201, "web\x00", "we b", "é", ""])
def test_path_ids_of_unsafe_characters_are_refused(value: str) -> None:
    err = refused(path_value, "machine", value)
    assert (err.status, err.error) == (400, "bad machine")
    assert "letters, digits" in err.detail


def test_path_ids_that_healerd_makes_pass() -> None:
    for value in ("web-1", "i-0123456789abcdef0", "01M80B20D7QARGB4R0", "alert:HighLoad", "w" * 200):
        assert path_value("id", value) == value
