"""`healerd silence add|list|rm`: maintenance windows of a running daemon (a silenced machine or service is
alerted on and remediated by nobody until the silence ends)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from .cli_api import EXIT_USAGE, _api, _api_args, _when


def add_parsers(sub: Any) -> None:
    si = sub.add_parser("silence", help="maintenance windows: add, list, remove")
    ssub = si.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = ssub.add_parser("add", help="silence a service or a machine for a while")
    add.add_argument("--service", help="the service (all its machines)")
    add.add_argument("--machine", help="one machine")
    add.add_argument("--for", dest="duration", default="1h", help="how long, e.g. 30m or 2h (default 1h, at most 30d)")
    add.add_argument("--comment", default="", help="why (shown on the status page and in healerd status)")
    add.add_argument("--by", default="", help="who (default: your user name)")
    add.add_argument(
        "--force", action="store_true", help="silence a machine healerd does not know yet (one about to be launched)"
    )
    _api_args(add)
    _api_args(ssub.add_parser("list", help="the silences running or to come"))
    rm = ssub.add_parser("rm", help="end a silence now")
    rm.add_argument("id")
    _api_args(rm)


def cmd_silence(args: argparse.Namespace) -> int:
    if args.action == "add":
        if not args.service and not args.machine:
            print("healerd silence add needs --service S and/or --machine M", file=sys.stderr)
            return EXIT_USAGE
        body: dict[str, Any] = {"duration": args.duration, "comment": args.comment, "created_by": args.by or _user()}
        if args.force:
            body["force"] = True
        if args.service:
            body["service"] = args.service
        if args.machine:
            body["machine"] = args.machine
        made = _api(args, "/api/v1/silences", body)
        if args.json:
            print(json.dumps(made, indent=2))
        else:
            print(f"silence {made['id']}: {_target(made)} until {_when(made['ends_at'])}")
            if made.get("warning"):
                print(f"warning: {made['warning']}")
        return 0
    if args.action == "rm":
        gone = _api(args, f"/api/v1/silences/{args.id}", {}, delete=True)
        print(json.dumps(gone) if args.json else f"silence {gone['deleted']} ended")
        return 0
    view = _api(args, "/api/v1/silences")
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    if not view["silences"]:
        print("no silences running or to come")
    for s in view["silences"]:
        who = f" by {s['created_by']}" if s.get("created_by") else ""
        why = f": {s['comment']}" if s.get("comment") else ""
        print(f"{s['id']}  {_target(s)} until {_when(s['ends_at'])}{who}{why}")
    return 0


def _target(s: dict[str, Any]) -> str:
    parts = [
        f"service {s['service']}" if s.get("service") else "",
        f"machine {s['machine']}" if s.get("machine") else "",
    ]
    return ", ".join(p for p in parts if p)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
