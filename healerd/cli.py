"""The `healerd` command line: run, validate, check, status, and the commands of a running daemon."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import sys
from typing import Any

from . import __version__, cli_access, cli_demo, cli_incidents, cli_provider, cli_rollout, cli_silence, daemon
from .alerting import build_notifiers
from .alerting_views import send_test
from .checks import CheckEnv
from .cli_api import (
    EXIT_FAILED,
    EXIT_PIPE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    ApiError,
    _api,
    _api_args,
    _load,
    _print_table,
    _when,
)
from .cli_status import cmd_status
from .config import Config, ConfigError, Mode
from .durations import parse_duration
from .machines import Lifecycle
from .plugins import PROVIDER_KINDS, ROTATION_KINDS
from .providers.base import ProviderEnv
from .results import CheckResult, Status
from .runner import build_check, run_check
from .store import StoreError
from .targets import Target

EXIT_CONFIG = EXIT_USAGE

EPILOG = f"""\
Commands that talk to a daemon (status, incidents, quarantine, mode, silence, rollout, images, cluster) talk to
the daemon of -c CONFIG (its daemon.listen, api_token_file, tls_cert_file); without -c, to the one of
/etc/healerd/healerd.yaml when readable, else http://127.0.0.1:9464; --url wins.

exit status:
  0    done
  {EXIT_FAILED}    healerd refused (not allowed, a conflict, its own failure) or what was asked failed
  {EXIT_USAGE}    a usage error or bad input: a typo'd command, a config that cannot be read, an unknown
       service, machine or incident
  {EXIT_UNREACHABLE}    no daemon answered at the address (not running, another port, a certificate not trusted)
  {EXIT_PIPE}  the output was closed early (| head)
  healerd check exits with the worst check status instead: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, suggesting the closest command when a command or action is mistyped."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is None or value in choices:
            return
        names = [str(c) for c in choices]
        close = difflib.get_close_matches(str(value), names, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise argparse.ArgumentError(action, f"invalid choice: {value!r}{hint} (choose from {', '.join(names)})")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="healerd",
        description="Self-healing monitoring daemon.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"healerd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", required=True, help="config file (YAML)")
    run.add_argument("--mode", choices=[m.value for m in Mode], help="override daemon.mode")
    run.add_argument(
        "--move-aside-broken-state",
        action="store_true",
        help="if the state database is damaged, rename it (state.db.broken-<time>) and start with an empty state",
    )
    run.add_argument(
        "--crash-at",
        metavar="ACTION[:after]",
        help="testing only: SIGKILL this daemon at that playbook step (crash-safety tests); logged loudly",
    )

    val = sub.add_parser("validate", help="check a config file; exit 0 with a summary or 2 with every error")
    val.add_argument("-c", "--config", required=True)
    val.add_argument(
        "--allow-empty", action="store_true", help="accept a config with no services (exit 0 with a warning)"
    )

    chk = sub.add_parser("check", help="run every check once, print a table, exit with the worst status")
    chk.add_argument("-c", "--config", required=True)
    chk.add_argument("--service", help="only this service")
    chk.add_argument("--json", action="store_true", help="print JSON instead of a table")

    st = sub.add_parser("status", help="services, machines and incidents from a running daemon")
    _api_args(st)

    inc = sub.add_parser("incidents", help="list incidents, or show one with its timeline")
    inc.add_argument("id", nargs="?", help="an incident id")
    inc.add_argument("--resolve", action="store_true", help="mark the incident resolved by hand")
    _api_args(inc)
    cli_incidents.add_incident_args(inc)  # healerd incidents ack ID [--comment TEXT]

    q = sub.add_parser("quarantine", help="quarantined machines: list, release, terminate")
    qsub = q.add_subparsers(dest="action", required=True, metavar="ACTION")
    _api_args(qsub.add_parser("list", help="list quarantined machines"))
    rel = qsub.add_parser("release", help="release a machine from quarantine")
    rel.add_argument("machine")
    rel.add_argument(
        "--to-rotation", action="store_true", help="re-run its checks and put it back in rotation only if they pass"
    )
    rel.add_argument("--timeout", default="60s", help="how long its checks may take to pass (default 60s)")
    _api_args(rel)
    term = qsub.add_parser("terminate", help="terminate a quarantined machine (its evidence bundle is kept)")
    term.add_argument("machine")
    _api_args(term)

    notify = sub.add_parser("notify", help="notifiers: send a test message")
    nsub = notify.add_subparsers(dest="action", required=True, metavar="ACTION")
    nt = nsub.add_parser("test", help="send a test message through one notifier and print the receiver's answer")
    nt.add_argument("-c", "--config", required=True)
    nt.add_argument("--notifier", required=True)

    mode = sub.add_parser("mode", help="show or switch the remediation mode of a running daemon")
    mode.add_argument("mode", nargs="?", choices=[m.value for m in Mode] + ["pause", "resume", "config"])
    mode.add_argument("--service", help="only this service")
    _api_args(mode)
    cl = sub.add_parser("cluster", help="the cluster a running node is part of")
    clsub = cl.add_subparsers(dest="cluster_command", required=True)
    _api_args(clsub.add_parser("status", help="the leader, its epoch, and every node with its shard"))
    cli_rollout.add_parsers(sub)
    cli_silence.add_parsers(sub)
    cli_demo.add_parsers(sub)
    cli_incidents.add_parsers(sub)
    cli_provider.add_parsers(sub)
    cli_access.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly; stdout goes to /dev/null so that Python's own flush
        # at exit does not complain either
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE
    return code


def _dispatch(args: argparse.Namespace) -> int:
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "validate":
            return cmd_validate(args)
        if args.command == "check":
            return cmd_check(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "incidents" and args.id == "ack":
            return cli_incidents.cmd_ack(args)
        if args.command == "incidents":
            return cmd_incidents(args)
        if args.command == "storm":
            return cli_incidents.cmd_storm(args)
        if args.command == "quarantine":
            return cmd_quarantine(args)
        if args.command == "mode":
            return cmd_mode(args)
        if args.command == "notify":
            return cmd_notify(args)
        if args.command == "cluster":
            return cmd_cluster(args)
        if args.command == "images":
            return cli_rollout.cmd_images(args)
        if args.command == "rollout":
            return cli_rollout.cmd_rollout(args)
        if args.command == "silence":
            return cli_silence.cmd_silence(args)
        if args.command == "demo":
            return cli_demo.cmd_demo(args)
        if args.command == "provider":
            return cli_provider.cmd_provider(args)
        if args.command == "access":
            return cli_access.cmd_access(args)
    except ApiError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except StoreError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    return 2


def cmd_run(args: argparse.Namespace) -> int:
    mode = Mode(args.mode) if args.mode else None
    try:
        return daemon.run(args.config, mode, args.crash_at, args.move_aside_broken_state)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_CONFIG


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    empty = not config.services and not args.allow_empty
    if not empty:
        print(config.summary())
        for warning in config.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    else:
        # valid, but almost certainly not what was meant (a wrong file, a failed template): say so in CI
        print(
            f"{config.path}: the config is empty: 0 services, nothing would be checked; "
            "add services (docs/configuration.md) or pass --allow-empty",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    if args.service and args.service not in config.services:
        print(
            f"no service {args.service!r} in {config.path}; services: {', '.join(config.services)}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    rows = asyncio.run(_run_all_once(config, args.service))
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "service": s,
                        "machine": m,
                        "check": c,
                        "status": r.status.name,
                        "duration": round(r.duration, 6),
                        "message": r.message,
                        "metrics": [d.as_dict() for d in r.metrics],
                    }
                    for s, m, c, r in rows
                ],
                indent=2,
            )
        )
    else:
        _print_table(
            ["SERVICE", "MACHINE", "CHECK", "STATUS", "TIME", "MESSAGE"],
            [[s, m or "(service)", c, r.status.name, f"{r.duration * 1000:.0f}ms", r.message] for s, m, c, r in rows],
            # checks run against machines: none configured, or none known yet (a service healerd launches)
            empty=f"no check ran for service {args.service}: no check or no machine to run it on"
            if args.service
            else "no check ran: no check configured, or no machine to run one on yet",
        )
    worst = int(Status.worst([r.status for *_, r in rows]))
    for problem in asyncio.run(_rotation_problems(config, args.service)):
        print(problem, file=sys.stderr)
        worst = max(worst, int(Status.CRITICAL))
    return worst


async def _rotation_problems(config: Config, only: str | None) -> list[str]:
    """What keeps healerd from driving each service's load balancer (HAProxy's socket missing, not admin)."""
    out = []
    for svc in config.services.values():
        cls = ROTATION_KINDS.get(svc.rotation_kind)
        if (only and svc.name != only) or cls is None or not hasattr(cls, "problem"):
            continue
        rotation = cls(svc.name, svc.rotation or cls.Config(), state_dir=config.daemon.state_dir)
        problem = await rotation.problem()  # type: ignore[attr-defined]
        if problem:
            out.append(f"service {svc.name}: rotation {svc.rotation_kind}: {problem}")
    return out


async def _run_all_once(config: Config, only: str | None) -> list[tuple[str, str, str, CheckResult]]:
    env = CheckEnv(tuple(config.daemon.check_paths), config.base_dir)
    jobs: list[tuple[str, str, str, Any]] = []
    # Machines a provider launched are known from the state store: read it, never write it (the daemon may
    # be running) and never launch anything.
    store = daemon.make_store(config)
    has_store = await store.open_readonly()
    try:
        for svc in config.services.values():
            if only and svc.name != only:
                continue
            prov = config.providers[svc.provider]
            kind = PROVIDER_KINDS.get(prov.kind)
            assert kind is not None  # the config names only known kinds
            provider = kind(
                prov.name, prov.options, env=ProviderEnv(config.daemon.state_dir, store if has_store else None)
            )
            machines = await provider.list_machines(svc)
            if not machines and svc.managed:
                where = "" if has_store else f" (no state in {store.where} yet)"
                print(f"service {svc.name}: no machines{where}; `healerd run` launches them", file=sys.stderr)
            for machine in machines:
                if machine.lifecycle not in (Lifecycle.PROBATION, Lifecycle.IN_SERVICE):
                    continue
                for spec in svc.checks:
                    check = build_check(spec, machine.target, env)
                    jobs.append((svc.name, machine.id, spec.name, run_check(check, spec.timeout, spec.timeout_status)))
            for spec in svc.service_checks:
                check = build_check(spec, Target(svc.name, ""), env)
                jobs.append((svc.name, "", spec.name, run_check(check, spec.timeout, spec.timeout_status)))
        sem = asyncio.Semaphore(256)

        async def bounded(coro: Any) -> CheckResult:
            async with sem:
                result: CheckResult = await coro
                return result

        results = await asyncio.gather(*(bounded(j[3]) for j in jobs))
    finally:
        await env.close()
        await store.close()
    return [(s, m, c, r) for (s, m, c, _), r in zip(jobs, results, strict=True)]


def cmd_incidents(args: argparse.Namespace) -> int:
    if args.id and args.resolve:
        view = _api(args, f"/api/v1/incidents/{args.id}/resolve", {"by": "cli"})
        print(f"{view['id']} resolved")
        return 0
    if args.id:
        view = _api(args, f"/api/v1/incidents/{args.id}")
        if args.json:
            print(json.dumps(view, indent=2))
            return 0
        machine = f"  machine {view['machine']}" if view.get("machine") else ""
        print(f"incident {view['id']}  {view['state']}  service {view['service']}{machine}")
        print(f"  {view['summary']}")
        if view.get("replacement"):
            print(f"  replacement: {view['replacement']}")
        if view.get("error"):
            print(f"  error: {view['error']}")
        for line in cli_incidents.incident_lines(view):
            print(line)
        print()
        _print_table(
            ["TIME", "WHAT"],
            [[_when(t["timestamp"]), t["summary"]] for t in view["timeline"]],
            empty="nothing in its timeline yet",
        )
        return 0
    rows = _api(args, "/api/v1/incidents")["incidents"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _print_table(
        ["ID", "STATE", "SERVICE", "MACHINE", "OPENED", "REPLACEMENT", "SUMMARY"],
        [
            [
                r["id"],
                r["state"],
                r["service"],
                r["machine"] or "-",
                _when(r["opened_at"]),
                r["replacement"] or "-",
                r["summary"],
            ]
            for r in rows
        ],
        empty="no incidents",
    )
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    if args.action == "list":
        rows = _api(args, "/api/v1/quarantine")["quarantined"]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        _print_table(
            ["MACHINE", "SERVICE", "ADDRESS", "INCIDENT", "SINCE", "BUNDLE"],
            [
                [
                    r["id"],
                    r["service"],
                    r["address"] or "-",
                    r["incident"] or "-",
                    _when(r["quarantined_at"]),
                    r["bundle"] or "-",
                ]
                for r in rows
            ],
            empty="no machines in quarantine",
        )
        return 0
    if args.action == "release":
        timeout = parse_duration(args.timeout)
        out = _api(
            args,
            f"/api/v1/quarantine/{args.machine}/release",
            {"to_rotation": args.to_rotation, "timeout": timeout},
            timeout=timeout + 30,
        )
    else:
        out = _api(args, f"/api/v1/quarantine/{args.machine}/terminate", {})
    print(json.dumps(out, indent=2) if args.json else f"{out['machine']}: {out['lifecycle']} ({out['detail']})")
    return 0


def cmd_notify(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    if args.notifier not in config.notifiers:
        print(
            f"no notifier {args.notifier!r} in {config.path}; notifiers: {', '.join(config.notifiers) or 'none'}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    notifier = build_notifiers(config, {}, f"http://{config.daemon.listen}")[args.notifier]
    answer = asyncio.run(send_test(notifier))
    if answer.ok:
        print(f"{args.notifier}: delivered (HTTP {answer.status}) {answer.body.strip()[:500]}")
        return 0
    what = f"HTTP {answer.status}: {answer.body.strip()[:500]}" if answer.status else answer.error
    print(f"{args.notifier}: NOT delivered ({what})", file=sys.stderr)
    return 1


def cmd_mode(args: argparse.Namespace) -> int:
    if args.mode is None:
        out = _api(args, "/api/v1/mode")
    elif args.mode in ("pause", "resume"):
        out = _api(args, "/api/v1/mode", {"paused": args.mode == "pause"})
    else:
        body = {"mode": None if args.mode == "config" else args.mode, "service": args.service}
        out = _api(args, "/api/v1/mode", body)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        modes = ", ".join(f"{k}={v}" for k, v in out["service_modes"].items()) or "none"
        paused = " (paused)" if out["paused"] else ""
        print(f"mode {out['mode']}{paused}; services: {modes}; open incidents: {out['incidents_open']}")
        if out.get("warning"):
            print(f"warning: {out['warning']}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    view = _api(args, "/api/v1/cluster")
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    confirm = view["confirm_from"]
    leader = view["leader"] or "none (a takeover is under way)"
    print(f"leader {leader}, epoch {view['epoch']}, lease_ttl {view['lease_ttl']:g}s; asked: {view['node']}")
    print(f"confirm_from {confirm['effective']}" + (f" ({confirm['note']})" if confirm["note"] else ""))
    if view.get("database_error"):
        print(f"DATABASE UNREACHABLE from {view['node']}: {view['database_error']}")
    print()
    rows = [
        [
            n["node"] + (" *" if n["leader"] else ""),
            n["advertise"],
            ("live" if n["live"] else "gone") + (f", odd one out ({n['disputed']})" if n.get("disputed") else ""),
            f"{n['seen_ago']:.1f}s ago",
            str(n["machines"]),
            str(n["checks"]),
            n["version"],
        ]
        for n in view["nodes"]
    ]
    _print_table(
        ["NODE (* leader)", "ADVERTISE", "STATE", "LAST SEEN", "MACHINES", "CHECKS", "VERSION"], rows, empty="no nodes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
