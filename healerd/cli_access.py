"""`healerd access add|list|revoke`: the named API credentials of a daemon's access file (docs/security.md#credentials).

The file is the `daemon.access_file` of `-c CONFIG` (else of $HEALERD_CONFIG, else of /etc/healerd/healerd.yaml),
or `--file PATH`. These commands change the file itself, not a running daemon: the daemon sees the change
within a second. Only the `daemon:` keys needed are read, so a config the daemon would refuse elsewhere still
names its access file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _yaml, access
from .access import AccessError, Scope
from .cli_api import EXIT_USAGE, _print_table, _when
from .cli_endpoint import CONFIG_ENV, DEFAULT_CONFIG, _config_path
from .config.document import read_text
from .config.problems import ConfigError
from .durations import parse_duration, require_above_zero
from .paths import resolve_against

#: beside the state store: when each credential was last used and from where (the daemon writes it)
USAGE_FILE = "access-usage.json"


@dataclass(frozen=True)
class _Files:
    access: Path
    #: None when no config says where the state is (`--file` alone)
    usage: Path | None


def add_parsers(sub: Any) -> None:
    acc = sub.add_parser("access", help="named, scoped API credentials: add, list, revoke")
    asub = acc.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = asub.add_parser("add", help="add a credential and print its token (shown only this once)")
    add.add_argument("name", help="1 to 63 letters, digits, '.', '_' or '-' (who or what uses it: ci, alertmanager)")
    add.add_argument(
        "--scope",
        required=True,
        choices=[s.value for s in Scope],
        help="what it may do: read < operate < admin (each includes the one before); alerts (Alertmanager's "
        "webhook) and cluster (the nodes' calls to each other) allow only their own",
    )
    add.add_argument("--expires", metavar="DURATION", help="refused after this long, e.g. 90d (default: never)")
    _file_args(add)
    _file_args(asub.add_parser("list", help="the credentials, with when and from where each was last used"))
    rev = asub.add_parser("revoke", help="remove a credential: a running daemon refuses its token within a second")
    rev.add_argument("name")
    _file_args(rev)


def _file_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        help=f"the config whose daemon.access_file to use (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )
    p.add_argument("--file", help="the access file itself (wins over the config's daemon.access_file)")
    p.add_argument("--json", action="store_true", help="print JSON")


def cmd_access(args: argparse.Namespace) -> int:
    try:
        files = _files(args)
        if args.action == "add":
            return _add(args, files)
        if args.action == "list":
            return _list(args, files)
        return _revoke(args, files)
    except AccessError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE


def _files(args: argparse.Namespace) -> _Files:
    """The access file and the usage file, from --file or the config."""
    path, named = _config_path(args)
    if args.file and not named:
        return _Files(Path(args.file).absolute(), None)  # a config merely found may belong to another daemon
    if path is None:
        why = "this user may not read it" if DEFAULT_CONFIG.exists() else "there is none"
        raise AccessError(f"no config names the access file ({DEFAULT_CONFIG}: {why}); pass -c CONFIG or --file PATH")
    path = path.absolute()
    flag = "-c" if args.config else f"${CONFIG_ENV}"
    try:
        data = _yaml.parse(read_text(path)).data
    except ConfigError as exc:
        problem = exc.problems[0].message if exc.problems else str(exc)
        raise AccessError(f"{flag} {path}: {problem}; give a config healerd can read, or --file PATH") from None
    except _yaml.YamlSyntaxError as exc:
        raise AccessError(f"{path}:{exc.line or 1}: {exc}; fix the config, or pass --file PATH") from None
    daemon = data.get("daemon") if isinstance(data, dict) else None
    daemon = daemon if isinstance(daemon, dict) else {}
    state_dir = resolve_against(path.parent, Path(_path_value(daemon, "state_dir", path) or ".healerd"))
    usage = state_dir / USAGE_FILE
    if args.file:
        return _Files(Path(args.file).absolute(), usage)
    value = _path_value(daemon, "access_file", path)
    if value is None:
        raise AccessError(
            f"{path} sets no daemon.access_file; add `access_file: access.yaml` under `daemon:` (a path relative "
            "to the config's folder), or pass --file PATH"
        )
    return _Files(resolve_against(path.parent, Path(value)), usage)


def _path_value(daemon: dict[str, Any], key: str, path: Path) -> str | None:
    value = daemon.get(key)
    if value is not None and (not isinstance(value, str) or not value or "\0" in value):
        raise AccessError(f"{path}: daemon.{key}: expected a file path, got {str(value)[:100]!r}; fix it")
    return value


def _add(args: argparse.Namespace, files: _Files) -> int:
    now = time.time()
    expires = None
    if args.expires:
        try:
            seconds = require_above_zero(
                parse_duration(args.expires, what="--expires"), what="--expires", example="90d"
            )
        except ValueError as exc:
            said = str(exc)
            raise AccessError(said if said.startswith("--expires") else f"--expires: {said}") from None
        expires = now + seconds
    token = access.add(files.access, args.name, Scope(args.scope), expires=expires, now=now)
    if args.json:
        shown = {"name": args.name, "scope": args.scope, "created": now, "expires": expires, "token": token}
        print(json.dumps({**shown, "file": str(files.access)}, indent=2))
        return 0
    until = f"until {_when(expires)}" if expires else "never expires"
    print(f"added {args.name} (scope {args.scope}, {until}) to {files.access}")
    print("Its token, shown only this once (healerd keeps only a hash of it):")
    print()
    print(f"    {token}")
    print()
    print(
        "Keep it in a file only its user can read and give that to the CLI with --token-file FILE, or send it as "
        "the header Authorization: Bearer TOKEN. A running daemon accepts it within a second; "
        f"`healerd access revoke {args.name}` ends it."
    )
    return 0


def _list(args: argparse.Namespace, files: _Files) -> int:
    rows = access.listing(files.access, files.usage)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    now = time.time()

    def expiry(at: float | None) -> str:
        return "never" if at is None else _when(at) + (" (expired)" if at <= now else "")

    _print_table(
        ["NAME", "SCOPE", "CREATED", "EXPIRES", "LAST USED", "FROM"],
        [
            [
                r["name"],
                r["scope"],
                _when(r["created"]),
                expiry(r["expires"]),
                _when(r["last_used"]),
                r["last_from"] or "-",
            ]
            for r in rows
        ],
        empty=f"no credentials in {files.access}; add one with healerd access add NAME --scope SCOPE",
    )
    return 0


def _revoke(args: argparse.Namespace, files: _Files) -> int:
    if not access.revoke(files.access, args.name):
        raise AccessError(f"no credential named {args.name!r} in {files.access}; `healerd access list` shows them")
    if args.json:
        print(json.dumps({"name": args.name, "revoked": True}))
    else:
        print(f"revoked {args.name}: a running daemon refuses its token within a second")
    return 0
