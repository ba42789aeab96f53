"""Which requests the API takes, checked before any handler: a Host and an Origin of this daemon (DNS rebinding,
cross-site requests), JSON for every change, and the bearer token when `daemon.api_token_file` is set. A refusal
is an `InputError`, which the API answers in JSON like any other."""

from __future__ import annotations

import hmac
import ipaddress
from typing import TYPE_CHECKING

from aiohttp import hdrs, web

from .api_models import MAX_BODY, InputError

if TYPE_CHECKING:
    from .config.models import DaemonConfig

#: Methods that only read; every other method changes something and must send JSON.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

Authority = tuple[str, int | None]


def check_access(request: web.Request, daemon: DaemonConfig, api_token: str | None) -> None:
    """Refuse a foreign Host or Origin (400, 403), a change that is not JSON or a body too large (415, 413), then
    a change without the token (401), in that order."""
    _refuse_foreign(request, daemon)
    _refuse_body(request)
    _refuse_token(request, api_token)


def _authority(text: str) -> Authority | None:
    """(host, port) of a Host header or an origin's host[:port], host lower-cased; None when malformed."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    elif text.count(":") > 1:
        return None  # an IPv6 address must be bracketed
    else:
        host, sep, port = text.partition(":")
        port = port if sep else None
    if port is not None and not (port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        return None
    host = host.lower().removesuffix(".")
    try:
        host = ipaddress.ip_address(host).compressed
    except ValueError:
        if not host or len(host) > 253 or not all(c.isascii() and (c.isalnum() or c in "-._") for c in host):
            return None
    return host, int(port) if port is not None else None


def _shown(authority: Authority) -> str:
    host, port = authority
    host = f"[{host}]" if ":" in host else host
    return host if port is None else f"{host}:{port}"


def accepted_hosts(daemon: DaemonConfig) -> list[Authority]:
    """The Host values this daemon answers: its listen address, the loopback names when it listens on
    loopback (or on every address), and `daemon.allowed_hosts`."""
    listen = _authority(daemon.listen) or (daemon.listen_host.lower(), daemon.listen_port)
    out = [listen]
    try:
        ip = ipaddress.ip_address(listen[0])
        local = ip.is_loopback or ip.is_unspecified
    except ValueError:
        local = listen[0] == "localhost"
    if local:
        out += [(name, daemon.listen_port) for name in _LOOPBACK_NAMES if (name, daemon.listen_port) != listen]
    for entry in getattr(daemon, "allowed_hosts", None) or []:  # a config without the key allows no more
        parsed = _authority(str(entry))
        if parsed is not None and parsed not in out:
            out.append(parsed)
    return out


def _matches(wanted: Authority, accepted: list[Authority]) -> bool:
    host, port = wanted
    for a_host, a_port in accepted:
        if host != a_host:
            continue
        # an entry without a port accepts any; a request without a port means the scheme's (80 or 443)
        if a_port is None or port == a_port or (port is None and a_port in (80, 443)):
            return True
    return False


def _refuse_foreign(request: web.Request, daemon: DaemonConfig) -> None:
    """403 for a Host that is not this daemon's (DNS rebinding) or an Origin that is not the same site."""
    hosts = request.headers.getall(hdrs.HOST, [])
    if len(hosts) > 1:
        raise InputError("bad Host", "send one Host header")
    accepted = accepted_hosts(daemon)
    listed = ", ".join(_shown(a) for a in accepted)
    # No Host at all is HTTP/1.0 from a script; a browser always sends one, so it cannot be a rebinding.
    if hosts:
        authority = _authority(hosts[0])
        if authority is None or not _matches(authority, accepted):
            raise InputError(
                "unknown Host",
                f"Host {hosts[0][:200]!r} is not one of {listed}; add it to daemon.allowed_hosts "
                "if clients reach healerd by that name",
                status=403,
            )
    origins = request.headers.getall(hdrs.ORIGIN, [])
    if origins:
        scheme, sep, rest = origins[0].partition("://")
        authority = _authority(rest) if sep and scheme.lower() in ("http", "https") else None
        if len(origins) > 1 or authority is None or not _matches(authority, accepted):
            raise InputError(
                "foreign Origin",
                f"Origin {origins[0][:200]!r} is not this daemon ({listed}); healerd answers no cross-site "
                "requests and sends no CORS headers: call the API from the healerd CLI or curl, which send no Origin",
                status=403,
            )


def _refuse_body(request: web.Request) -> None:
    """415 unless a request that changes something says JSON; 413 for a declared body over MAX_BODY."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise InputError("body too large", f"the body may be at most {MAX_BODY} bytes", status=413)
    if request.method in SAFE_METHODS:
        return
    # A web page can send text/plain, form and multipart bodies to any site without asking; application/json
    # needs a CORS preflight, which healerd never grants.
    json_type = hdrs.CONTENT_TYPE in request.headers and request.content_type == "application/json"
    if not json_type or (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
        got = request.headers.get(hdrs.CONTENT_TYPE)
        raise InputError(
            "JSON only",
            f"{request.method} needs Content-Type: application/json (got {got[:100] if got else 'none'!r}); "
            "send it even without a body, e.g. curl -H 'Content-Type: application/json' -d '{}'",
            status=415,
        )


def _refuse_token(request: web.Request, api_token: str | None) -> None:
    if request.method in SAFE_METHODS or api_token is None:
        return
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    # bytes: compare_digest refuses str with non-ASCII characters
    if not token or not hmac.compare_digest(token.encode(errors="replace"), api_token.encode()):
        raise InputError(
            "unauthorized",
            "send Authorization: Bearer <token> (the api_token_file's content; "
            "the healerd CLI reads it with --token-file FILE or -c CONFIG)",
            status=401,
        )
