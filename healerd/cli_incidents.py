"""`healerd incidents ack ID` and `healerd storm clear SERVICE`: a human takes an incident, or ends a storm
cooldown; and how the other commands show why healerd is not acting (held back, cooling down, acknowledged)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from typing import Any

from .cli_api import EXIT_USAGE, _api, _api_args, _when
from .durations import format_age


def add_incident_args(inc: argparse.ArgumentParser) -> None:
    """`healerd incidents ack ID [--comment TEXT] [--by WHO]` rides on `healerd incidents [ID]`."""
    inc.add_argument("ack_id", nargs="?", metavar="ID", help=argparse.SUPPRESS)
    inc.add_argument("--comment", default="", help="with ack: what you say (shown with the acknowledgement)")
    inc.add_argument("--by", default="", help="with ack: who (default: your user name)")


def add_parsers(sub: Any) -> None:
    st = sub.add_parser("storm", help="storm cooldowns after a max_unhealthy short-circuit: end one now")
    ssub = st.add_subparsers(dest="action", required=True, metavar="ACTION")
    clear = ssub.add_parser("clear", help="end the service's storm cooldown now: remediation may act at once")
    clear.add_argument("service")
    clear.add_argument("--by", default="", help="who (default: your user name)")
    _api_args(clear)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def cmd_ack(args: argparse.Namespace) -> int:
    if not args.ack_id:
        print(
            "healerd incidents ack needs the incident's id: healerd incidents ack ID [--comment TEXT]", file=sys.stderr
        )
        return EXIT_USAGE
    body = {"by": args.by or _user(), "comment": args.comment}
    view = _api(args, f"/api/v1/incidents/{args.ack_id}/ack", body)
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    print(f"{view['id']} {acknowledged_line(view['acknowledged'])}; no more reminders are sent about it")
    return 0


def cmd_storm(args: argparse.Namespace) -> int:
    out = _api(args, f"/api/v1/services/{args.service}/storm/clear", {"by": args.by or _user()})
    if args.json:
        print(json.dumps(out, indent=2))
    elif out["cleared"]:
        print(
            f"storm cooldown of {out['service']} cleared by {out['by']} ({out['seconds_left']:.0f}s were left): "
            "its held-back incidents are looked at again now"
        )
    else:
        print(f"{out['service']} has no storm cooldown running: nothing to clear")
    return 0


def acknowledged_line(ack: dict[str, Any]) -> str:
    said = f": {ack['comment']}" if ack.get("comment") else ""
    return f"acknowledged by {ack.get('by') or 'someone'} at {_when(ack['at'])}{said}"


def incident_lines(view: dict[str, Any]) -> list[str]:
    """What `healerd incidents ID` adds under the incident: why it is held back, and who is on it."""
    out = []
    held = view.get("held")
    if held:
        since = f" since {_when(held['since'])}" if held.get("since") else ""
        out.append(f"  held back ({held['reason']}){since}: {held['detail']}")
        if held.get("what_to_do"):
            out.append(f"  what to do: {held['what_to_do']}")
    if view.get("acknowledged"):
        out.append(f"  {acknowledged_line(view['acknowledged'])}")
    out.extend(ladder_lines(view.get("ladder")))
    return out


def ladder_lines(ladder: dict[str, Any] | None) -> list[str]:
    """Each rung the incident went through, how it ended, and the rung it is on (or that healed it)."""
    if not ladder:
        return []
    out = [f"  skipped: {ladder['skipped']}"] if ladder.get("skipped") else []
    for i, tried in enumerate(ladder["tried"], 1):
        out.append(f"  rung {i}: {tried['playbook']} {tried['outcome']}: {tried['error']}")
    if ladder.get("healed_by"):
        out.append(f"  rung {ladder['rung']}: {ladder['healed_by']} healed it (kept, back in rotation)")
    elif ladder["tried"] or ladder["rung"] > 1:
        out.append(f"  rung {ladder['rung']}: {ladder['playbook']} (now)")
    return out


def why_not_acting(services: list[dict[str, Any]]) -> list[str]:
    """What `healerd status` prints under the services: each incident held back with its gate, figures and
    what to do; each storm cooldown with its time left."""
    now = time.time()
    out = []
    for s in services:
        storm = s.get("storm_cooldown")
        if storm:
            out.append(
                f"{s['name']}: storm cooldown, {format_age(storm['seconds_left'])} left "
                f"(nothing is remediated until it ends; end it now: {storm['what_to_do']})"
            )
        for h in s.get("held") or []:
            since = f" for {format_age(now - h['since'])}" if h.get("since") else ""
            out.append(f"{s['name']}: {h['machine']} held back ({h['reason']}){since}: {h['detail']}")
            if h.get("what_to_do"):
                out.append(f"  what to do: {h['what_to_do']}")
    return out
