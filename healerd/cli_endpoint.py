"""Which daemon a CLI command talks to: the address, token and TLS trust of the config it is given.

`-c CONFIG` means that config's `daemon.listen` (https when it has `tls_cert_file`, trusting that certificate
as well as the system's CAs) and its `api_token_file`. Without `-c`, the config in $HEALERD_CONFIG or
/etc/healerd/healerd.yaml when it can be read, else http://127.0.0.1:9464. `--url` always wins for the
address. Only the `daemon:` keys a client needs are read: a config the daemon would refuse elsewhere (a
playbook missing on this host, say) still names its daemon.
"""

from __future__ import annotations

import argparse
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _yaml
from .config.document import read_text
from .config.network import listen_address
from .config.problems import ConfigError
from .paths import resolve_against

DEFAULT_URL = "http://127.0.0.1:9464"
#: the config a command reads when it is given no -c (the package installs it there)
DEFAULT_CONFIG = Path("/etc/healerd/healerd.yaml")
#: names another default config (a user's own, a test's), read as DEFAULT_CONFIG would be
CONFIG_ENV = "HEALERD_CONFIG"
#: The API token's usual place (docs/security.md); read when no config is read and no --token-file given.
DEFAULT_TOKEN_FILE = Path("/etc/healerd/api-token")
#: an address a daemon listens on that a client cannot connect to, and the one it reaches it at instead
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class EndpointError(Exception):
    """The daemon to talk to cannot be known (a config or token file that cannot be read or used)."""


@dataclass(frozen=True)
class ClientSettings:
    """What a client takes from a daemon's config."""

    path: Path
    listen: str
    token_file: Path | None
    cert_file: Path | None


@dataclass(frozen=True)
class Endpoint:
    url: str
    #: where the address came from, for messages ("daemon.listen of /etc/healerd/healerd.yaml")
    source: str
    token_file: Path | None
    #: the token file named by the user or the config (unreadable is an error), or only a usual place
    token_required: bool
    context: ssl.SSLContext | None


def client_settings(path: Path) -> ClientSettings:
    """The daemon section's listen, api_token_file and tls_cert_file of the config at `path`."""
    path = path.absolute()
    text = read_text(path)  # ConfigError: missing, unreadable, not UTF-8, too big
    try:
        data = _yaml.parse(text).data
    except _yaml.YamlSyntaxError as exc:
        where = f"{path}:{exc.line}" if exc.line else str(path)
        raise EndpointError(f"{where}: {exc}; fix the file or pass --url") from None
    daemon = data.get("daemon") if isinstance(data, dict) else None
    if daemon is None:
        daemon = {}
    if not isinstance(daemon, dict):
        raise EndpointError(f"{path}: daemon: must be a mapping (listen, api_token_file, ...); fix it or pass --url")
    listen = daemon.get("listen", "127.0.0.1:9464")
    try:
        listen = listen_address(listen) if isinstance(listen, str) else listen_address(repr(listen))
    except ValueError as exc:
        raise EndpointError(f"{path}: daemon.listen: {exc}; fix it or pass --url") from None
    return ClientSettings(
        path,
        listen,
        _file(daemon, "api_token_file", path),
        _file(daemon, "tls_cert_file", path),
    )


def _file(daemon: dict[str, Any], key: str, path: Path) -> Path | None:
    value = daemon.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\0" in value:
        raise EndpointError(f"{path}: daemon.{key}: expected a file path, got {str(value)[:100]!r}; fix it")
    return resolve_against(path.parent, Path(value))


def _config_path(args: argparse.Namespace) -> tuple[Path | None, bool]:
    """The config to read and whether the user named it (then it must be readable)."""
    if getattr(args, "config", None):
        return Path(args.config), True
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]), True
    return (DEFAULT_CONFIG, False) if os.access(DEFAULT_CONFIG, os.R_OK) else (None, False)


def endpoint(args: argparse.Namespace) -> Endpoint:
    """The daemon the command talks to (computed once per command)."""
    found: Endpoint | None = getattr(args, "_endpoint", None)
    if found is None:
        found = _resolve(args)
        args._endpoint = found
    return found


def _resolve(args: argparse.Namespace) -> Endpoint:
    path, named = _config_path(args)
    settings = None
    if path is not None:
        try:
            settings = client_settings(path)
        except ConfigError as exc:
            if named:
                problem = exc.problems[0].message if exc.problems else str(exc)
                flag = "-c" if getattr(args, "config", None) else f"${CONFIG_ENV}"
                raise EndpointError(f"{flag} {path}: {problem}; give a config healerd can read, or --url") from None
    token_file: Path | None = DEFAULT_TOKEN_FILE
    required = False
    if getattr(args, "token_file", None):
        token_file, required = Path(args.token_file), True
    elif settings is not None:
        token_file, required = settings.token_file, True
    url: str = getattr(args, "url", None) or ""
    if url:
        source = "--url"
    elif settings is not None:
        host = settings.listen.rpartition(":")[0].strip("[]")
        host = _WILDCARDS.get(host, host)
        scheme = "https" if settings.cert_file is not None else "http"
        url = f"{scheme}://{f'[{host}]' if ':' in host else host}:{settings.listen.rpartition(':')[2]}"
        source = f"daemon.listen of {settings.path}"
    else:
        why = "this user may not read it" if DEFAULT_CONFIG.exists() else "there is none"
        url, source = DEFAULT_URL, f"the default address: {DEFAULT_CONFIG} not read, {why}; -c CONFIG names another"
    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context()
        if settings is not None and settings.cert_file is not None:
            try:  # the daemon's own certificate as a trust anchor, besides the system's CAs
                context.load_verify_locations(cafile=str(settings.cert_file))
            except (OSError, ssl.SSLError) as exc:
                raise EndpointError(
                    f"cannot trust the daemon's certificate {settings.cert_file} (daemon.tls_cert_file of "
                    f"{settings.path}): {getattr(exc, 'strerror', None) or exc}"
                ) from None
    return Endpoint(url.rstrip("/"), source, token_file, required, context)


def read_token(ep: Endpoint) -> str | None:
    """The bearer token to send. A token file named by --token-file or the config that cannot be read is an
    error (a typo'd path must not pass unnoticed); the usual place, when unreadable, is skipped (a daemon that
    needs a token says so with its 401)."""
    if ep.token_file is None:
        return None
    try:
        return ep.token_file.read_text().strip() or None
    except OSError as exc:
        if not ep.token_required:  # the usual place, absent: the daemon's 401 says a token is needed
            return None
        raise EndpointError(
            f"cannot read the API token file {ep.token_file}: {exc.strerror or exc}; run as a user who may read it "
            "(sudo), or pass --token-file"
        ) from None
