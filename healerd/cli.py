"""The `healerd` command line: run, validate, check, status."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from . import __version__
from .config import Config, ConfigError, Mode, load_config
from .results import CheckResult, Status

DEFAULT_URL = "http://127.0.0.1:9464"
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="healerd", description="Self-healing monitoring daemon.")
    p.add_argument("--version", action="version", version=f"healerd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", required=True, help="config file (YAML)")
    run.add_argument("--mode", choices=[m.value for m in Mode], help="override daemon.mode")

    val = sub.add_parser("validate", help="check a config file; exit 0 with a summary or 2 with every error")
    val.add_argument("-c", "--config", required=True)

    chk = sub.add_parser("check", help="run every check once, print a table, exit with the worst status")
    chk.add_argument("-c", "--config", required=True)
    chk.add_argument("--service", help="only this service")
    chk.add_argument("--json", action="store_true", help="print JSON instead of a table")

    st = sub.add_parser("status", help="services, machines and incidents from a running daemon")
    st.add_argument("--url", default=DEFAULT_URL, help=f"the daemon's API (default {DEFAULT_URL})")
    st.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "validate":
            return cmd_validate(args)
        if args.command == "check":
            return cmd_check(args)
        if args.command == "status":
            return cmd_status(args)
    except KeyboardInterrupt:
        return 130
    return 2


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import run

    try:
        return run(args.config, Mode(args.mode) if args.mode else None)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_CONFIG


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    print(config.summary())
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
        )
    worst = Status.worst([r.status for *_, r in rows])
    return int(worst)


async def _run_all_once(config: Config, only: str | None) -> list[tuple[str, str, str, CheckResult]]:
    from .checks import CheckEnv
    from .providers import PROVIDER_KINDS
    from .runner import run_check
    from .targets import Target, render_model

    env = CheckEnv(tuple(config.daemon.check_paths), config.base_dir)
    jobs: list[tuple[str, str, str, Any]] = []
    try:
        for svc in config.services.values():
            if only and svc.name != only:
                continue
            prov = config.providers[svc.provider]
            provider = PROVIDER_KINDS.get(prov.kind)(prov.name, prov.options)  # type: ignore[misc]
            for machine in await provider.list_machines(svc):
                for spec in svc.checks:
                    check = spec.check_class(render_model(spec.options, machine.target.fields()), machine.target, env)
                    jobs.append((svc.name, machine.id, spec.name, run_check(check, spec.timeout)))
            for spec in svc.service_checks:
                target = Target(svc.name, "")
                check = spec.check_class(render_model(spec.options, target.fields()), target, env)
                jobs.append((svc.name, "", spec.name, run_check(check, spec.timeout)))
        sem = asyncio.Semaphore(256)

        async def bounded(coro: Any) -> CheckResult:
            async with sem:
                result: CheckResult = await coro
                return result

        results = await asyncio.gather(*(bounded(j[3]) for j in jobs))
    finally:
        await env.close()
    return [(s, m, c, r) for (s, m, c, _), r in zip(jobs, results, strict=True)]


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)] if rows else []
    if not rows:
        print("no checks configured")
        return
    widths[-1] = 0
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def cmd_status(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    try:
        services = _get(f"{base}/api/v1/services")["services"]
        machines = _get(f"{base}/api/v1/machines")["machines"]
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(
            f"cannot reach healerd at {base}: {reason}; is it running? (healerd run -c FILE, or --url)",
            file=sys.stderr,
        )
        return 1
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
                str(s["desired"]),
                s["reason"],
            ]
            for s in services
        ],
    )
    print()
    now = time.time()
    rows = []
    for m in machines:
        bad = [
            f"{name}={c['hard_state']}{'~' if c['flapping'] else ''}"
            for name, c in m["checks"].items()
            if c["hard_state"] != "OK" or c["flapping"]
        ]
        since = f"{now - m['since']:.0f}s" if m.get("since") else "-"
        rows.append([m["service"], m["id"], m["address"], m["lifecycle"], m["condition"], since, " ".join(bad)])
    _print_table(["SERVICE", "MACHINE", "ADDRESS", "LIFECYCLE", "CONDITION", "FOR", "PROBLEMS"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
