"""`healerd images list|promote` and `healerd rollout status|pause|resume|abort` (docs/rollouts.md)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from .cli_api import ApiError, _api, _api_args, _when
from .durations import parse_duration

#: seconds between looks at a rollout followed with --wait
POLL = 1.0


def add_parsers(sub: Any) -> None:
    im = sub.add_parser("images", help="image versions and their state; promote a version by canary")
    isub = im.add_subparsers(dest="action", required=True, metavar="ACTION")
    _api_args(isub.add_parser("list", help="every image, its known-good version, each version's state"))
    pr = isub.add_parser(
        "promote", help="try VERSION on canary machines, judge it, then roll it over the service (or roll back)"
    )
    pr.add_argument("service")
    pr.add_argument("version")
    pr.add_argument("--canary", type=int, help="canary machines (default: the image's rollout.canary; 0: none)")
    pr.add_argument("--bake", help="how long the canary is judged, e.g. 5m (default: the image's rollout.bake)")
    pr.add_argument("--wait", action="store_true", help="follow the rollout until it ends; exit 1 if rolled back")
    _api_args(pr)

    ro = sub.add_parser("rollout", help="a service's rollout: status, pause, resume, abort")
    ro.add_argument("action", choices=["status", "pause", "resume", "abort"])
    ro.add_argument("service")
    ro.add_argument("--wait", action="store_true", help="status: follow the rollout until it ends")
    _api_args(ro)


def cmd_images(args: argparse.Namespace) -> int:
    if args.action == "promote":
        return _promote(args)
    view = _api(args, "/api/v1/images")
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    for image in view["images"]:
        print(f"{image['name']} (provider {image['provider']}): known-good {image['known_good']}")
        for v in image["versions"]:
            extra = f"  {v['reason']}" if v["reason"] else ""
            by = f" [{v['by']}, {_when(v['updated_at'])}]" if v["by"] else ""
            print(f"  {v['version']:<16} {v['state']:<11}{extra}{by}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"version": args.version, "by": "cli"}
    if args.canary is not None:
        body["canary"] = args.canary
    if args.bake is not None:
        try:
            body["bake"] = parse_duration(args.bake, what="--bake")
        except ValueError as exc:
            raise ApiError(f"--bake: {exc}") from None
    view = _api(args, f"/api/v1/services/{args.service}/rollout", body)
    if args.json and not args.wait:
        print(json.dumps(view, indent=2))
        return 0
    print(f"rollout {view['id']} of {view['image']} {view['version']} to {view['service']} started ({view['stage']})")
    return _follow(args) if args.wait else 0


def cmd_rollout(args: argparse.Namespace) -> int:
    path = f"/api/v1/services/{args.service}/rollout"
    if args.action != "status":
        view = _api(args, f"{path}/{args.action}", {"by": "cli"})
    elif args.wait:
        return _follow(args)
    else:
        view = _api(args, path)
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    if args.action in ("pause", "resume", "abort"):
        done = {"pause": "paused", "resume": "resumed", "abort": "aborting (rolling back)"}[args.action]
        print(f"rollout {view['id']} of {view['image']} {view['version']} to {view['service']}: {done}")
    print(render(view))
    return 0


def _follow(args: argparse.Namespace) -> int:
    """Print each change of stage (and what the rollout waits for) until it ends."""
    path = f"/api/v1/services/{args.service}/rollout"
    said = None
    while True:
        view = _api(args, path)
        line = (view["stage"], view["waiting"], view["reason"])
        if line != said:
            said = line
            print(f"{time.strftime('%H:%M:%S')} {render(view, short=True)}", flush=True)
        if not view["active"]:
            return 0 if view["stage"] == "completed" else 1
        time.sleep(POLL)


#: what a rollout waits for while paused; stale in the answer to `resume` (the rollout has not looked again yet)
_PAUSED_HOLD = "held: the rollout is paused"


def render(view: dict[str, Any], short: bool = False) -> str:
    state = view["stage"] + ("" if view["active"] else " (ended)") + (", paused" if view["paused"] else "")
    previous = f" (from {view['previous']})" if view.get("previous") else ""
    head = f"{view['service']}: {view['image']} {view['version']}{previous} {state}"
    waiting = view["waiting"] or ""
    if waiting.startswith(_PAUSED_HOLD) and not view["paused"]:
        waiting = ""
    extra = [f"waiting: {waiting}"] if waiting else []
    if view["reason"]:
        extra.append(view["reason"])
    if short:
        return "; ".join([head, *extra])
    lines = [head, f"  rollout {view['id']}, started {_when(view['started_at'])} by {view['started_by'] or '-'}"]
    lines += [f"  {x}" for x in extra]
    judge = view.get("judge") or {}
    if judge.get("canary_results") is not None:
        sides = [f"canary {_side(judge, 'canary')}", f"baseline {_side(judge, 'baseline')}"]
        ratios = [f"p{q} {r:g}x" for q in (50, 95) if (r := judge.get(f"latency_ratio_p{q}")) is not None]
        if ratios:
            sides.append(f"latency ratio {' '.join(ratios)}")
        lines.append(f"  judge: {judge.get('outcome') or 'not yet'}; " + "; ".join(sides))
    progress = view.get("progress") or {}
    if "new" in progress:
        target, new, old, desired = (progress[k] for k in ("target", "new", "old", "desired"))
        lines.append(f"  refresh to {target}: {new} new, {old} old, desired {desired}")
    for m in view["machines"]:
        version, role, condition = m["version"] or "-", m["role"] or "-", m["condition"] or "not checked yet"
        lines.append(f"  {m['machine']:<16} {version:<12} {role:<8} {m['lifecycle']:<11} {condition}")
    return "\n".join(lines)


def _side(judge: dict[str, Any], side: str) -> str:
    """One side's figures, only those it has (no p50 of no results)."""
    parts = [f"{judge.get(f'{side}_results', 0)} results"]
    if (machines := judge.get(f"{side}_machines")) is not None:  # records of older versions do not say
        parts[0] += f" from {machines} machine{'' if machines == 1 else 's'}"
    if (rate := judge.get(f"{side}_error_rate")) is not None:
        parts.append(f"error rate {rate:.2%}")
    parts += [f"p{q} {v * 1000:.1f}ms" for q in (50, 95) if (v := judge.get(f"{side}_p{q}")) is not None]
    return ", ".join(parts)
