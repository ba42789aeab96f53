"""`healerd images list|promote` and `healerd rollout status|pause|resume|abort` (DESIGN §16)."""

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
    else:
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


def render(view: dict[str, Any], short: bool = False) -> str:
    state = view["stage"] + ("" if view["active"] else " (ended)") + (", paused" if view["paused"] else "")
    head = f"{view['service']}: {view['image']} {view['version']} (from {view['previous']}) {state}"
    extra = [f"waiting: {view['waiting']}"] if view["waiting"] else []
    if view["reason"]:
        extra.append(view["reason"])
    if short:
        return "; ".join([head, *extra])
    lines = [head, f"  rollout {view['id']}, started {_when(view['started_at'])} by {view['started_by'] or '-'}"]
    lines += [f"  {x}" for x in extra]
    judge = view.get("judge") or {}
    if judge.get("canary_results") is not None:
        lines.append(
            "  judge: {outcome}; canary {canary_results} results, error rate {cer:.2%}, p50 {cp50} p95 {cp95}; "
            "baseline {baseline_results} from {baseline_machines} machine(s), {ber:.2%}, p50 {bp50} p95 {bp95}; "
            "ratio p50 {r50} p95 {r95}".format(
                outcome=judge.get("outcome"),
                canary_results=judge["canary_results"],
                baseline_results=judge["baseline_results"],
                baseline_machines=judge.get("baseline_machines", "?"),  # records of older versions do not say
                cer=judge["canary_error_rate"],
                ber=judge["baseline_error_rate"],
                cp50=_ms(judge.get("canary_p50")),
                cp95=_ms(judge.get("canary_p95")),
                bp50=_ms(judge.get("baseline_p50")),
                bp95=_ms(judge.get("baseline_p95")),
                r50=judge.get("latency_ratio_p50"),
                r95=judge.get("latency_ratio_p95"),
            )
        )
    progress = view.get("progress") or {}
    if "new" in progress:
        target, new, old, desired = (progress[k] for k in ("target", "new", "old", "desired"))
        lines.append(f"  refresh to {target}: {new} new, {old} old, desired {desired}")
    for m in view["machines"]:
        lines.append(f"  {m['machine']:<16} {m['version']:<12} {m['role']:<8} {m['lifecycle']:<11} {m['condition']}")
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}ms"
