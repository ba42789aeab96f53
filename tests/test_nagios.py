"""The Nagios plugin output protocol: message, long text, performance data and exit codes."""

from __future__ import annotations

import pytest

from healerd.checks.nagios import Range, parse_output, parse_perfdata, status_from_exit
from healerd.results import PerfDatum, Status

# The multi-line example of the Nagios plugin guidelines: perfdata on line one, after the long text's
# own '|', and on every line after that.
DISK = """\
DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968
/ 15272 MB (77%);
/boot 68 MB (69%);
/home 69357 MB (27%);
/var/log 819 MB (84%); | /boot=68MB;88;93;0;98
/home=69357MB;253404;253409;0;253414
/var/log=818MB;970;975;0;980
"""


def test_first_line_before_the_pipe_is_the_message() -> None:
    out = parse_output("TCP OK - 0.000 second response time on 127.0.0.1 port 80|time=0.000315s;;;0.000000;10.000000\n")
    assert out.message == "TCP OK - 0.000 second response time on 127.0.0.1 port 80"
    assert out.long_text == ""
    assert out.metrics == (PerfDatum("time", 0.000315, "s", None, None, 0.0, 10.0),)


def test_message_without_perfdata_or_newline() -> None:
    out = parse_output("WARNING: hello world")
    assert (out.message, out.long_text, out.metrics) == ("WARNING: hello world", "", ())


def test_empty_output_gives_empty_message() -> None:
    for text in ("", "\n"):
        out = parse_output(text)
        assert (out.message, out.long_text, out.metrics) == ("", "", ())


def test_multi_line_output_long_text_and_all_perfdata_joined() -> None:
    out = parse_output(DISK)
    assert out.message == "DISK OK - free space: / 3326 MB (56%);"
    assert out.long_text.splitlines() == [
        "/ 15272 MB (77%);",
        "/boot 68 MB (69%);",
        "/home 69357 MB (27%);",
        "/var/log 819 MB (84%);",
    ]
    assert [(m.label, m.value, m.uom) for m in out.metrics] == [
        ("/", 2643.0, "MB"),
        ("/boot", 68.0, "MB"),
        ("/home", 69357.0, "MB"),
        ("/var/log", 818.0, "MB"),
    ]
    home = out.metrics[2]
    assert (home.warn, home.crit, home.min, home.max) == ("253404", "253409", 0.0, 253414.0)


def test_long_text_lines_without_a_pipe_are_not_perfdata() -> None:
    out = parse_output("OK - fine | a=1\nsecond line\nthird=3 looks like perfdata but is text\n")
    assert out.message == "OK - fine"
    assert out.long_text == "second line\nthird=3 looks like perfdata but is text"
    assert [m.label for m in out.metrics] == ["a"]


def test_perfdata_only_in_long_text() -> None:
    out = parse_output("OK - no perf here\ndetail | x=5c\ny=6c\n")
    assert out.message == "OK - no perf here"
    assert out.long_text == "detail"
    assert [(m.label, m.value, m.uom) for m in out.metrics] == [("x", 5.0, "c"), ("y", 6.0, "c")]


def test_crlf_line_endings() -> None:
    out = parse_output("OK - windows\r\nmore\r\n")
    assert out.message == "OK - windows"
    assert out.long_text == "more"


def test_quoted_labels_with_spaces_and_doubled_quotes() -> None:
    metrics = parse_perfdata("'free space'=10% 'it''s ok'=1 'a=b'=2 plain=3")
    assert [(m.label, m.value) for m in metrics] == [
        ("free space", 10.0),
        ("it's ok", 1.0),
        ("a=b", 2.0),
        ("plain", 3.0),
    ]
    assert metrics[0].uom == "%"


@pytest.mark.parametrize("uom", ["", "s", "ms", "us", "%", "B", "KB", "MB", "GB", "TB", "c"])
def test_every_standard_unit_of_measure_is_kept(uom: str) -> None:
    (m,) = parse_perfdata(f"x=1.5{uom};2;3;0;10")
    assert (m.label, m.value, m.uom) == ("x", 1.5, uom)
    assert (m.warn, m.crit, m.min, m.max) == ("2", "3", 0.0, 10.0)


def test_value_forms_negative_exponent_and_decimal_comma() -> None:
    metrics = parse_perfdata("neg=-4.5 exp=1e3ms comma=0,25s")
    assert [(m.value, m.uom) for m in metrics] == [(-4.5, ""), (1000.0, "ms"), (0.25, "s")]


def test_U_means_value_undetermined() -> None:
    (m,) = parse_perfdata("'load avg'=U;5;10;0;")
    assert m.label == "load avg"
    assert m.value is None and m.uom == ""
    assert (m.warn, m.crit, m.min, m.max) == ("5", "10", 0.0, None)


def test_trailing_empty_fields_may_be_dropped() -> None:
    short, semis, ranges = parse_perfdata("a=1s b=2s;;;; c=3;@10:20;~:30")
    assert (short.warn, short.crit, short.min, short.max) == (None, None, None, None)
    assert (semis.warn, semis.crit, semis.min, semis.max) == (None, None, None, None)
    # thresholds are ranges and are kept as written
    assert (ranges.warn, ranges.crit, ranges.min, ranges.max) == ("@10:20", "~:30", None, None)


def test_malformed_items_are_skipped_and_the_rest_kept() -> None:
    metrics = parse_perfdata("good=1 noequals =5 empty= word=abc unit=5parsecs dots=1..2 good2=2;3 last=9")
    assert [(m.label, m.value) for m in metrics] == [("good", 1.0), ("good2", 2.0), ("last", 9.0)]


def test_an_empty_quoted_label_is_malformed_and_skipped() -> None:
    metrics = parse_perfdata("''=7 x=1")
    assert [(m.label, m.value) for m in metrics] == [("x", 1.0)]


def test_an_unclosed_quote_does_not_swallow_the_following_items() -> None:
    metrics = parse_perfdata("'abc=1 b=2")
    assert [(m.label, m.value) for m in metrics] == [("b", 2.0)]


def test_junk_min_max_become_none_not_an_error() -> None:
    (m,) = parse_perfdata("x=1;;;zero;ten")
    assert m.value == 1.0 and m.min is None and m.max is None


def test_perfdata_of_empty_string_is_empty() -> None:
    assert parse_perfdata("") == ()
    assert parse_perfdata("   ") == ()


@pytest.mark.parametrize(
    ("code", "status"),
    [(0, Status.OK), (1, Status.WARNING), (2, Status.CRITICAL), (3, Status.UNKNOWN)],
)
def test_exit_codes_0_to_3_are_the_statuses(code: int, status: Status) -> None:
    assert status_from_exit(code) is status


@pytest.mark.parametrize("code", [4, 127, 126, 255, -9, -15, None])
def test_any_other_exit_is_unknown(code: int | None) -> None:
    assert status_from_exit(code) is Status.UNKNOWN


@pytest.mark.parametrize(
    ("text", "alerting", "quiet"),
    [
        ("10", [-1, 10.5], [0, 5, 10]),  # outside 0..10
        ("10:", [9.9, -5], [10, 1e9]),  # below 10
        ("~:10", [10.1, 1e9], [-1e9, 10]),  # above 10
        ("10:20", [9, 21], [10, 15, 20]),  # outside 10..20
        ("@10:20", [10, 15, 20], [9, 21]),  # inside 10..20
    ],
)
def test_nagios_ranges_alert_as_the_plugin_guidelines_say(text: str, alerting: list[float], quiet: list[float]) -> None:
    r = Range.parse(text)
    assert [v for v in alerting if r.alerts(v)] == alerting
    assert [v for v in quiet if r.alerts(v)] == []


@pytest.mark.parametrize("text", ["ten", "20:10", "1:2:3", "@"])
def test_a_bad_range_is_refused_with_the_forms_it_accepts(text: str) -> None:
    with pytest.raises(ValueError, match=r"range"):
        Range.parse(text)
