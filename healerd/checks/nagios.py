"""The Nagios plugin output protocol: `TEXT | perfdata` on the first line, more lines, more perfdata."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..results import PerfDatum, Status

_VALUE = re.compile(r"^([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)([a-zA-Z%]*)$")
_UOMS = {"", "s", "ms", "us", "%", "b", "kb", "mb", "gb", "tb", "c"}


@dataclass(frozen=True, slots=True)
class PluginOutput:
    message: str
    long_text: str
    metrics: tuple[PerfDatum, ...]


def status_from_exit(code: int | None) -> Status:
    """Exit 0..3 map to the statuses; anything else (a signal, 127 'not found') is UNKNOWN."""
    if code in (0, 1, 2, 3):
        return Status(code)
    return Status.UNKNOWN


def parse_output(text: str) -> PluginOutput:
    """Split plugin stdout into its first line (message), the long text, and all perfdata."""
    lines = text.splitlines()
    if not lines:
        return PluginOutput("", "", ())
    first, _, perf = lines[0].partition("|")
    perf_parts = [perf] if perf else []
    long_lines: list[str] = []
    in_perf = False
    for line in lines[1:]:
        if in_perf:
            perf_parts.append(line)
            continue
        text_part, sep, more = line.partition("|")
        long_lines.append(text_part)
        if sep:
            in_perf = True
            perf_parts.append(more)
    return PluginOutput(first.strip(), "\n".join(long_lines).strip(), parse_perfdata(" ".join(perf_parts)))


def _tokens(perf: str) -> list[str]:
    """Split on spaces, keeping quoted labels (with '' as a literal quote) together."""
    out: list[str] = []
    i, n = 0, len(perf)
    while i < n:
        while i < n and perf[i].isspace():
            i += 1
        if i >= n:
            break
        start = i
        if perf[i] == "'":
            j = i + 1
            closed = False
            while j < n:
                if perf[j] == "'":
                    if j + 1 < n and perf[j + 1] == "'":
                        j += 2
                        continue
                    j += 1
                    closed = True
                    break
                j += 1
            if closed:  # an unclosed quote is malformed: fall back to splitting on spaces
                i = j
        while i < n and not perf[i].isspace():
            i += 1
        out.append(perf[start:i])
    return out


def _float(text: str) -> float | None:
    try:
        return float(text) if text not in ("", "U") else None
    except ValueError:
        return None


def parse_perfdata(perf: str) -> tuple[PerfDatum, ...]:
    """Parse `'label'=value[UOM];[warn];[crit];[min];[max]` items; malformed items are skipped."""
    items: list[PerfDatum] = []
    for token in _tokens(perf):
        label, sep, rest = token.rpartition("=")
        if not sep or not label:
            continue
        if label.startswith("'"):
            if not label.endswith("'") or len(label) < 2:
                continue  # unbalanced quotes
            label = label[1:-1].replace("''", "'")
        elif "'" in label:
            continue
        if not label:
            continue
        fields = rest.split(";")
        raw_value = fields[0]
        value: float | None
        if raw_value == "U":
            value, uom = None, ""
        else:
            m = _VALUE.match(raw_value.replace(",", "."))
            if not m or m.group(2).lower() not in _UOMS:
                continue
            value, uom = float(m.group(1)), m.group(2)
        fields += [""] * (5 - len(fields))
        items.append(
            PerfDatum(
                label=label,
                value=value,
                uom=uom,
                warn=fields[1] or None,
                crit=fields[2] or None,
                min=_float(fields[3]),
                max=_float(fields[4]),
            )
        )
    return tuple(items)


@dataclass(frozen=True)
class Range:
    """A Nagios threshold range (monitoring-plugins' guidelines): `10` alerts outside 0..10, `10:` below 10,
    `~:10` above 10, `10:20` outside 10..20, `@10:20` inside 10..20."""

    low: float
    high: float
    inside: bool = False
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> Range:
        raw = text.strip()
        inside = raw.startswith("@")
        body = raw[1:] if inside else raw
        lo_text, sep, hi_text = body.partition(":")
        if not body:
            raise ValueError(f"expected a Nagios range like 10, 10:, ~:10, 10:20 or @10:20, got {text!r}")
        if not sep:
            lo_text, hi_text = "0", body
        try:
            low = -math.inf if lo_text == "~" else float(lo_text or 0)
            high = math.inf if hi_text == "" else float(hi_text)
        except ValueError:
            raise ValueError(f"expected a Nagios range like 10, 10:, ~:10, 10:20 or @10:20, got {text!r}") from None
        if math.isnan(low) or math.isnan(high) or low > high:
            raise ValueError(f"the range {text!r} is empty: its start is above its end")
        return cls(low, high, inside, raw)

    def alerts(self, value: float) -> bool:
        within = self.low <= value <= self.high
        return within if self.inside else not within
