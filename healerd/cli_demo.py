"""`healerd demo stop`: end the demo machines (`python -m healerd.demo` processes the `local` provider launched
for a config), which by design outlive the daemon that launched them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cli_api import EXIT_FAILED, EXIT_USAGE, _load
from .cli_endpoint import EndpointError, endpoint
from .config import Config
from .machines import Lifecycle
from .providers.local import find_owned
from .store import Store, StoreError

#: the config `make run` starts the demo on, in the folder it is run from
DEMO_CONFIG = "config.example.yaml"
#: what a demo machine's command line holds (the image versions of the demo run `python -m healerd.demo`)
DEMO_MODULE = "healerd.demo"
#: how long a machine has to go after SIGTERM before it is killed
GRACE = 5.0


@dataclass(frozen=True)
class DemoMachine:
    service: str
    machine: str
    pid: int
    start_time: str


def add_parsers(sub: Any) -> None:
    demo = sub.add_parser("demo", help="the demo fleet of make run: stop its machines")
    dsub = demo.add_subparsers(dest="action", required=True, metavar="ACTION")
    stop = dsub.add_parser(
        "stop", help="end the demo machines launched for a config (its daemon must be stopped first)"
    )
    stop.add_argument("-c", "--config", default=DEMO_CONFIG, help=f"the demo's config (default ./{DEMO_CONFIG})")


def cmd_demo(args: argparse.Namespace) -> int:
    path = Path(args.config)
    if not path.exists() and args.config == DEMO_CONFIG:
        print(
            f"no {DEMO_CONFIG} here: run this in healerd's folder (where make run runs), or pass -c CONFIG",
            file=sys.stderr,
        )
        return EXIT_USAGE
    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    running = _daemon_answers(args)
    if running:
        print(
            f"healerd is still running on {config.path} ({running}): it would launch new machines; stop it first "
            "(Ctrl-C where make run runs), then run healerd demo stop again",
            file=sys.stderr,
        )
        return EXIT_FAILED
    state_dir = str(config.daemon.state_dir.resolve())
    found, others = _demo_machines(state_dir)
    if not found:
        print(f"no demo machines running for {config.path}")
    for m in found:
        _stop(m)
        print(f"stopped {m.machine} (service {m.service}, pid {m.pid})")
    if others:
        print(f"left running {len(others)} machine(s) of this config that are not demo machines: {', '.join(others)}")
    if found:
        note = asyncio.run(_forget(config, found))
        if note:
            print(note, file=sys.stderr)
    return 0


def _daemon_answers(args: argparse.Namespace) -> str:
    """The address of the config's daemon when it answers /healthz, else ''."""
    try:
        ep = endpoint(args)
    except EndpointError:
        return ""
    with (
        contextlib.suppress(OSError, ValueError),
        urllib.request.urlopen(ep.url + "/healthz", timeout=2, context=ep.context),
    ):
        return ep.url
    return ""


def _demo_machines(state_dir: str) -> tuple[list[DemoMachine], list[str]]:
    """The demo machines launched by the healerd of `state_dir`, and the ids of its other machines."""
    found, others = [], []
    for machine, (pid, env) in sorted(find_owned(state_dir, None).items()):
        started = _start_time(pid)
        if started is None:
            continue
        if DEMO_MODULE in _cmdline(pid):
            found.append(DemoMachine(env.get("HEALERD_SERVICE", ""), machine, pid, started))
        else:
            others.append(machine)
    return found, others


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), None once it is gone or a zombie: with the pid, it
    names one process (a pid reused by another process has another start time)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def _same(m: DemoMachine) -> bool:
    """Still the demo machine found (not gone, not a reused pid)."""
    return _start_time(m.pid) == m.start_time and DEMO_MODULE in _cmdline(m.pid)


def _stop(m: DemoMachine) -> None:
    """SIGCONT (a quarantined machine may be frozen) and SIGTERM to its process group; SIGKILL after GRACE."""
    for sig in (signal.SIGCONT, signal.SIGTERM):
        if _same(m):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(m.pid, sig)
    deadline = time.monotonic() + GRACE
    while _same(m) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _same(m):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(m.pid, signal.SIGKILL)


async def _forget(config: Config, stopped: list[DemoMachine]) -> str:
    """Record the stopped machines as terminated, so that the next start launches a new fleet instead of
    finding every machine down (and holding back); a note when that could not be done."""
    if config.cluster is not None:
        return "the machines are still recorded in the cluster's store: the next start replaces them"
    store = Store(config.daemon.state_dir, config.daemon.history, event_log_size=config.daemon.event_log_size)
    try:
        await store.open()
        now = time.time()
        for m in stopped:
            machine = await store.machines.get(m.service, m.machine)
            svc = config.services.get(m.service)
            if machine is None or svc is None or machine.lifecycle in (Lifecycle.TERMINATED, Lifecycle.RELEASED):
                continue
            gone = dataclasses.replace(machine, lifecycle=Lifecycle.TERMINATED)
            await store.machines.upsert(gone, svc.provider, now)
    except StoreError as exc:
        return f"could not record the machines as terminated in {store.where} ({exc}): the next start replaces them"
    finally:
        await store.close()
    return ""
