"""What the CLI's commands that talk to a running daemon share: which daemon, one request, the exit codes."""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
import time
import urllib.error
import urllib.request
from http import HTTPMethod
from typing import Any

from .cli_endpoint import DEFAULT_CONFIG, DEFAULT_TOKEN_FILE, EndpointError, endpoint, read_token
from .config import Config, ConfigError, load_config

#: exit statuses of every command but `check` (which exits with the worst check status, as a Nagios plugin)
EXIT_OK = 0
#: the daemon refused (not allowed, a conflict, its own failure) or what was asked did not succeed
EXIT_FAILED = 1
#: the command line or what it names is wrong: a typo'd command, a bad config, an unknown service or machine
EXIT_USAGE = 2
#: no daemon answered at the address (not running, another port, a TLS certificate not trusted)
EXIT_UNREACHABLE = 3
#: stdout was closed early (`| head`): the command stops quietly, as a program ended by SIGPIPE
EXIT_PIPE = 141

#: the API's answers that mean the request named something unknown or was malformed
_USAGE_STATUSES = {400, 404, 405, 413, 422}


def _api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        help=f"talk to the daemon of this config: its daemon.listen, api_token_file, tls_cert_file "
        f"(default: {DEFAULT_CONFIG} when readable, else http://127.0.0.1:9464)",
    )
    p.add_argument("--url", help="the daemon's API, e.g. https://healerd.example.com:9464 (wins over -c's listen)")
    p.add_argument(
        "--token-file",
        help=f"file holding the API bearer token (default: the config's api_token_file, else {DEFAULT_TOKEN_FILE})",
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return None


class ApiError(Exception):
    """A command that talked to a daemon failed; `exit_code` is the status the CLI exits with."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _api(
    args: argparse.Namespace, path: str, body: dict[str, Any] | None = None, timeout: float = 30, delete: bool = False
) -> Any:
    """GET `path`, or POST `body` (JSON, as the API requires for every change), or with `delete` DELETE it (a JSON
    body too); errors become one ApiError."""
    try:
        ep = endpoint(args)
        token = read_token(ep)
    except EndpointError as exc:
        raise ApiError(str(exc), EXIT_USAGE) from None
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = "Bearer " + token
    method = HTTPMethod.DELETE if delete else HTTPMethod.POST if body is not None else HTTPMethod.GET
    try:
        req = urllib.request.Request(ep.url + path, data=data, headers=headers, method=method)
    except ValueError as exc:  # not a URL at all
        raise ApiError(f"--url {ep.url!r}: {exc}; give one like http://127.0.0.1:9464", EXIT_USAGE) from None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ep.context) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read())
            message = f"{err.get('error')}: {err.get('detail')}" if err.get("detail") else str(err.get("error"))
        except (ValueError, AttributeError):
            message = str(exc.reason)
        code = EXIT_USAGE if exc.code in _USAGE_STATUSES else EXIT_FAILED
        raise ApiError(f"healerd at {ep.url} refused ({exc.code}): {message}", code) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        hint = "is it running? (healerd run -c FILE; or say which daemon with -c CONFIG or --url)"
        if isinstance(reason, ssl.SSLCertVerificationError):
            hint = "the CLI trusts the system's CAs and the daemon.tls_cert_file of -c CONFIG; or use --url"
        raise ApiError(f"cannot reach healerd at {ep.url} ({ep.source}): {reason}; {hint}", EXIT_UNREACHABLE) from None
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(f"{ep.url}{path} answered something that is not JSON: is it healerd? ({ep.source})") from None


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _print_table(header: list[str], rows: list[list[str]], empty: str = "nothing to list") -> None:
    """Rows aligned under `header`; `empty` (what there is none of) when there are no rows."""
    if not rows:
        print(empty)
        return
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    widths[-1] = 0
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
