"""Which requests the API takes, checked before any handler: a Host and an Origin of this daemon (DNS rebinding,
cross-site requests), JSON for every change, and the caller's credential against the scope the endpoint needs
(docs/security.md). A refusal is an `InputError`, or a `Verdict` the API answers in JSON like any other."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from aiohttp import hdrs, web

from .access import AccessBook, Credential, Scope, grants
from .api_models import MAX_BODY, InputError
from .api_scopes import needed

if TYPE_CHECKING:
    from .config.models import DaemonConfig
    from .metrics import Metrics

log = structlog.get_logger("healerd.api")

#: Methods that only read; every other method changes something and must send JSON.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

Authority = tuple[str, int | None]


def check_request(request: web.Request, daemon: DaemonConfig) -> None:
    """Refuse a foreign Host or Origin (400, 403), then a change that is not JSON or a body too large (415,
    413); who may make it is `authorize`'s."""
    _refuse_foreign(request, daemon)
    _refuse_body(request)


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


@dataclass(frozen=True)
class Verdict:
    """Whether a request may go on, as whom (`credential`: its name, "" anonymous, INVALID a token nobody
    issued, expired or revoked), and the refusal an operator reads."""

    credential: str
    outcome: str  # allowed | unauthenticated | forbidden
    status: int = 200
    error: str = ""
    detail: str = ""

    @property
    def allowed(self) -> bool:
        return self.outcome == "allowed"


INVALID = "invalid"


def route_of(request: web.Request) -> str:
    """The route the request matched (`/api/v1/incidents/{id}`), or its path when none did."""
    resource = getattr(request.match_info.route, "resource", None)
    canonical = getattr(resource, "canonical", None)
    return canonical if isinstance(canonical, str) else request.path


async def authorize(request: web.Request, daemon: DaemonConfig, book: AccessBook, now: float) -> Verdict:
    """The scope the route needs (api_scopes) against the caller's credential: a bearer token, or the user a
    trusted proxy names. With no credential configured at all, the API is open as it always was."""
    route = route_of(request)
    scope = needed(request.method, route)
    who = await _caller(request, daemon, book, now)
    name = who.name if isinstance(who, Credential) else who
    guarded = book.configured or daemon.access_file is not None or daemon.trusted_proxy is not None
    if scope is None or not guarded:
        return Verdict(name, "allowed")
    if scope is Scope.READ and (daemon.public_reads or (route == "/" and daemon.status_page == "public")):
        return Verdict(name, "allowed")
    if not isinstance(who, Credential):
        why = "the token is unknown, expired or revoked" if who == INVALID else "no credential was sent"
        return Verdict(
            name,
            "unauthenticated",
            401,
            "unauthorized",
            f"{request.method[:10]} {route[:200]} needs a credential with scope {scope.value} ({why}): send "
            "Authorization: Bearer <token>; `healerd access add NAME --scope "
            f"{scope.value}` makes one, and the CLI reads it with --token-file FILE or -c CONFIG",
        )
    if not grants(who.scope, scope):
        return Verdict(
            name,
            "forbidden",
            403,
            "forbidden",
            f"the credential {who.name!r} has scope {who.scope.value}; {request.method[:10]} {route[:200]} needs "
            f"{scope.value}: ask an admin for a credential with that scope",
        )
    return Verdict(name, "allowed")


async def _caller(request: web.Request, daemon: DaemonConfig, book: AccessBook, now: float) -> Credential | str:
    """Who calls: the user a trusted proxy names (only on a connection from the proxy), else the bearer token's
    credential; "" when nobody is named, INVALID for a token or user that grants nothing."""
    proxy = daemon.trusted_proxy
    if proxy is not None and request.remote is not None and _address(request.remote) in proxy.addresses:
        user = request.headers.get(proxy.user_header, "").strip()
        if user:
            scope = proxy.scopes.get(user, proxy.default)
            if scope is None or len(user) > 200 or not user.isprintable():
                return INVALID
            return Credential(user, scope, 0.0, None)
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    if not header:
        return ""
    token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    if not token:
        return INVALID
    answered, found = book.known(token, now)
    if not answered:  # a token to hash (scrypt, ~30 ms): off the event loop
        found = await asyncio.to_thread(book.verify, token, now)
    return found if found is not None else INVALID


def _address(remote: str) -> str:
    try:
        return ipaddress.ip_address(remote).compressed
    except ValueError:
        return remote


#: where a request's credential name is kept for its handler (the `by` of the change it makes)
CALLER: web.RequestKey[str] = web.RequestKey("caller", str)


def by(request: web.Request, given: str = "") -> str:
    """Who makes a change: the credential's name; with none configured (an open API), what the caller says."""
    name = request.get(CALLER, "")
    return name if name and name != INVALID else given


class Gate:
    """Every request through `authorize`: counted per credential and outcome (healerd_api_requests_total), a
    refusal logged once per source address a minute, the caller's name kept for the handler."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._said: dict[str, float] = {}  # source -> when its refusals were last logged

    async def admit(self, request: web.Request, daemon: DaemonConfig, book: AccessBook, now: float) -> Verdict:
        verdict = await authorize(request, daemon, book, now)
        request[CALLER] = verdict.credential
        label = verdict.credential or "anonymous"
        self.metrics.counter("api_requests").labels(label, verdict.outcome).inc()
        if verdict.allowed:
            if verdict.credential not in ("", INVALID):
                book.used(verdict.credential, request.remote or "", now)
            return verdict
        source = request.remote or "?"
        if now - self._said.get(source, 0.0) >= 60.0:
            if len(self._said) > 10_000:  # a flood from many sources: forget the oldest minute's
                self._said = {s: t for s, t in self._said.items() if now - t < 60.0}
            self._said[source] = now
            log.warning(
                "API request refused",
                source=source,
                credential=label,
                outcome=verdict.outcome,
                method=request.method[:10],
                route=route_of(request)[:200],
            )
        return verdict
