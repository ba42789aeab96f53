"""What the CLI's commands that talk to a running daemon share: the API's address and token, one request."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from http import HTTPMethod
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, load_config

DEFAULT_URL = "http://127.0.0.1:9464"
#: The API token's usual place (docs/security.md); read when neither --token-file nor -c is given.
DEFAULT_TOKEN_FILE = Path("/etc/healerd/api-token")


def _api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_URL, help=f"the daemon's API (default {DEFAULT_URL})")
    p.add_argument(
        "--token-file",
        help=f"file holding the API bearer token (default: the api_token_file of -c CONFIG, else {DEFAULT_TOKEN_FILE})",
    )
    p.add_argument("-c", "--config", help="the daemon's config file, to read its api_token_file")
    p.add_argument("--json", action="store_true", help="print JSON")


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return None


class ApiError(Exception):
    pass


def _token(args: argparse.Namespace) -> str | None:
    """The bearer token: --token-file, else the api_token_file of -c CONFIG, else DEFAULT_TOKEN_FILE if readable."""
    path: Path | None
    if getattr(args, "token_file", None):
        path = Path(args.token_file)
    elif getattr(args, "config", None):
        config = _load(args.config)
        if config is None:
            raise ApiError(f"cannot take the API token from {args.config}: fix the errors above or pass --token-file")
        path = config.daemon.api_token_file
        if path is None:
            return None
    else:
        try:  # optional: a daemon without a token, or a user who may not read it, just goes without
            return DEFAULT_TOKEN_FILE.read_text().strip() or None
        except OSError:
            return None
    try:
        return path.read_text().strip() or None
    except OSError as exc:
        raise ApiError(f"cannot read the token file {path}: {exc.strerror or exc}") from None


def _api(
    args: argparse.Namespace, path: str, body: dict[str, Any] | None = None, timeout: float = 30, delete: bool = False
) -> Any:
    """GET `path`, or POST `body` (JSON, as the API requires for every change), or with `delete` DELETE it (a JSON
    body too); errors become one ApiError."""
    base = args.url.rstrip("/")
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    token = _token(args)
    if token:
        headers["Authorization"] = "Bearer " + token
    method = HTTPMethod.DELETE if delete else HTTPMethod.POST if body is not None else HTTPMethod.GET
    req = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read())
            message = f"{err.get('error')}: {err.get('detail')}" if err.get("detail") else str(err.get("error"))
        except ValueError:
            message = str(exc.reason)
        raise ApiError(f"healerd refused ({exc.code}): {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiError(
            f"cannot reach healerd at {base}: {reason}; is it running? (healerd run -c FILE, or --url)"
        ) from None


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"
