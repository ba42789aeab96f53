"""`healerd status`: the services, their machines grouped by zone, and why healerd is not acting."""

from __future__ import annotations

import argparse
import collections
import json
import time
from typing import Any

from . import cli_incidents
from .cli_api import _api, _print_table, _when
from .durations import format_age


def zone_lines(machines: list[dict[str, Any]]) -> list[str]:
    """Per service, its zones: machines serving and down in each, and the lost ones (machines unreachable)."""
    per: dict[str, dict[str, collections.Counter[str]]] = {}
    for m in machines:
        counts = per.setdefault(m["service"], {}).setdefault(m.get("zone") or "-", collections.Counter())
        if m["lifecycle"] == "unreachable":
            counts["unreachable"] += 1
        elif m["lifecycle"] == "in_service":
            counts["down" if m["condition"] == "down" else "serving"] += 1
    lines = []
    for service, zones in sorted(per.items()):
        parts = []
        for zone, c in sorted(zones.items()):
            text = f"{zone}: {c['serving']} serving" + (f", {c['down']} down" if c["down"] else "")
            parts.append(text + (f", LOST ({c['unreachable']} unreachable)" if c["unreachable"] else ""))
        lines.append(f"{service} zones: " + "; ".join(parts))
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    services = _api(args, "/api/v1/services")["services"]
    machines = _api(args, "/api/v1/machines")["machines"]
    if args.json:
        print(json.dumps({"services": services, "machines": machines}, indent=2))
        return 0
    _print_table(
        ["SERVICE", "STATE", "HEALTHY", "IMPAIRED", "DOWN", "DESIRED", "REASON"],
        [
            [
                s["name"],
                s["state"],
                str(s["machines"]["healthy"]),
                str(s["machines"]["impaired"]),
                str(s["machines"]["down"]),
                str(s["desired"]) if s.get("desired") is not None else "-",
                s["reason"] or "",
            ]
            for s in services
        ],
        empty="no services",
    )
    print()
    now = time.time()
    rows = []
    zoned = any(m.get("zone") for m in machines)
    for m in sorted(machines, key=lambda m: (m["service"], m.get("zone") or "", m["id"])) if zoned else machines:
        bad = [
            f"{name}={c['hard_state']}{'~' if c['flapping'] else ''}"
            for name, c in m["checks"].items()
            if c["hard_state"] != "OK" or c["flapping"]
        ]
        since = format_age(now - m["since"]) if m.get("since") else "-"
        rows.append(
            [
                m["service"],
                *([m.get("zone") or "-"] if zoned else []),
                m["id"],
                m["address"] or "-",
                m["lifecycle"],
                m["condition"],
                since,
                m.get("version") or "-",
                " ".join(bad),
            ]
        )
    columns = ["MACHINE", "ADDRESS", "LIFECYCLE", "CONDITION", "FOR", "VERSION", "PROBLEMS"]
    _print_table(
        ["SERVICE", *(["ZONE"] if zoned else []), *columns],
        rows,
        empty="no machines",
    )
    if zoned:
        print()
        print("\n".join(zone_lines(machines)))
    mode = _api(args, "/api/v1/mode")
    changed = mode.get("changed")
    line = f"mode {mode['mode']}" + (", paused" if mode["paused"] else "")
    if changed:
        line += f" (last change: {changed['what']} by {changed['by']}, {format_age(now - changed['at'])} ago)"
    print()
    print(line)
    held = cli_incidents.why_not_acting(services)  # why healerd is not acting: held back, cooling down
    if held:
        print()
        print("\n".join(held))
    silences = _api(args, "/api/v1/silences")["silences"]
    if silences:
        print()
    for sl in silences:  # their effect: nothing of theirs is alerted on or remediated
        target = " ".join(x for x in (sl.get("service") or "", sl.get("machine") or "") if x)
        who = f" by {sl['created_by']}" if sl.get("created_by") else ""
        why = f": {sl['comment']}" if sl.get("comment") else ""
        print(f"silenced {target} until {_when(sl['ends_at'])}{who}{why} (no alert, no remediation; {sl['id']})")
    return 0
