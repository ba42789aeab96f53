"""`healerd provider test NAME -c CONFIG [--yes]`: run a command provider's executable through the whole protocol
for real, on one test machine, and print verb by verb what conforms and what to fix (docs/providers.md)."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from typing import Any

from .cli_api import EXIT_FAILED, EXIT_USAGE, _load
from .config import Config
from .log import configure as configure_logging
from .providers.base import LaunchRequest, ProviderEnv
from .providers.command import CommandProvider
from .providers.command_conformance import Conformance, NamedService, Row
from .specs import ServiceSpec


def add_parsers(sub: Any) -> None:
    pv = sub.add_parser("provider", help="providers: test the executable of a command provider")
    psub = pv.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = psub.add_parser(
        "test",
        help="run its executable through every verb on a test machine it launches and terminates; 0: it conforms",
    )
    t.add_argument("name", help="the provider's name under providers:")
    t.add_argument("-c", "--config", required=True)
    t.add_argument(
        "--yes", action="store_true", help="really launch the test machine (without: say what would be done)"
    )


def cmd_provider(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    found = _plan(config, args.name)
    if isinstance(found, str):
        print(found, file=sys.stderr)
        return EXIT_USAGE
    provider, service, request = found
    what = (
        f"launch test machine {request.machine_id} of service {service.name} from image {request.image} "
        f"{request.version} through {' '.join(provider.opts.command)}, run every verb on it, then terminate it"
    )
    if not args.yes:
        print(f"healerd provider test would {what}.", file=sys.stderr)
        print("It creates a real machine (and may cost money): run again with --yes.", file=sys.stderr)
        return EXIT_USAGE
    print(f"provider {provider.name}: {what}")
    configure_logging(level="warning", stream=sys.stderr)  # the table says what went wrong; the calls are not news
    rows = asyncio.run(Conformance(provider, service, launch=request).run())
    _print(rows)
    failed = [r for r in rows if r.failed]
    if failed:
        print(f"provider {provider.name} does not conform: {len(failed)} of {len(rows)} step(s) failed")
        return EXIT_FAILED
    print(f"provider {provider.name} conforms to protocol 1")
    return 0


def _plan(config: Config, name: str) -> tuple[CommandProvider, ServiceSpec, LaunchRequest] | str:
    """The provider, the service and the launch of the test machine; or what is missing, with the fix."""
    prov = config.providers.get(name)
    if prov is None:
        return f"no provider {name!r} in {config.path}; providers: {', '.join(config.providers) or 'none'}"
    if prov.kind != CommandProvider.kind:
        return f"provider {name!r} is kind {prov.kind}: provider test runs the executable of a kind: command provider"
    images = [image for image in config.images.values() if image.provider == name]
    if not images:
        return f"no image uses provider {name!r}: add one under images: with provider: {name} (its spec is launched)"
    image = images[0]
    services = [s for s in config.services.values() if s.provider == name and s.image == image.name]
    service: ServiceSpec = services[0] if services else NamedService(image.name)
    provider = CommandProvider(name, prov.options, env=ProviderEnv(config.daemon.state_dir, None))
    machine_id = f"{service.name}-test-{secrets.token_hex(4)}"
    spec = image.versions[image.known_good]
    return provider, service, LaunchRequest(service.name, machine_id, image.name, image.known_good, spec, None)


def _print(rows: list[Row]) -> None:
    header = ["STEP", "RESULT", "SECONDS", "WHAT WAS WRONG -> HOW TO FIX IT"]
    cells = [[r.step, r.result.value, f"{r.seconds:.2f}", r.problem] for r in rows]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(3)]
    for row in [header, *cells]:
        print("  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)), row[3]]).rstrip())
