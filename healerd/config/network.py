"""How the API faces the network: the listen address and Host headers it accepts, its TLS certificate and
key, and the token without which it must not listen beyond loopback."""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import threading
from pathlib import Path

from .. import _yaml
from .problems import Collector, Problem

_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def ip_or_none(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def listen_address(v: str) -> str:
    """`host:port` the API can listen on (an IP address or a host name, IPv6 in brackets); ValueError if not."""
    host, sep, port = v.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port like 127.0.0.1:9464, got {v!r}")
    if not port:
        raise ValueError(f"expected host:port like 127.0.0.1:9464, got {v!r}: the port is missing; add it after ':'")
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(
            f"expected host:port like 127.0.0.1:9464, got {v!r}: port {port[:20]!r} is not a port from 1 to 65535; "
            "fix the port"
        )
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ip_or_none(bare) is None and not _HOSTNAME.fullmatch(bare):
        raise ValueError(
            f"{host!r} is not an IP address or a host name; listen on an address like 127.0.0.1:9464 or [::1]:9464"
        )
    return v


def advertise_address(v: str) -> str:
    """`host:port` where the other nodes of a cluster reach this one: a listen address, but not a wildcard."""
    listen_address(v)
    host = v.rpartition(":")[0].strip("[]")
    if (ip := ip_or_none(host)) is not None and ip.is_unspecified:
        raise ValueError(
            f"{v} is the wildcard address: the other nodes cannot reach this node there; set advertise to the "
            f"address they reach it at, like 10.0.0.7:{v.rpartition(':')[2]}"
        )
    return v


def host_header(v: str) -> str:
    """A Host header value the API should accept: a name or address, IPv6 in brackets, an optional port."""
    m = re.fullmatch(r"(\[([0-9A-Fa-f:.]+)\]|[A-Za-z0-9][A-Za-z0-9._-]*)(?::(\d{1,5}))?", v)
    if len(v) > 255 or m is None or (m[2] and ip_or_none(m[2]) is None) or (m[3] and int(m[3]) > 65535):
        raise ValueError(
            f"{v!r} is not a Host header value; write a host name or address, with an optional port, "
            "like healerd.example.com, 10.0.0.5:9464 or [fd00::5]:9464"
        )
    return v.lower()


def check_files(token: Path | None, cert: Path | None, key: Path | None, out: Collector) -> None:
    """The token and TLS files exist, are readable, and hold what they should."""
    if token is not None and (problem := file_problem(token, "the bearer token")):
        out.add(("daemon", "api_token_file"), problem)
    if (cert is None) != (key is None):
        given, missing = ("tls_cert_file", "tls_key_file") if cert is not None else ("tls_key_file", "tls_cert_file")
        out.add(("daemon", given), f"{given} is set but {missing} is not; set both (a certificate and its key) or none")
        return
    if cert is None or key is None:
        return
    unreadable = False
    for name, file in (("tls_cert_file", cert), ("tls_key_file", key)):
        try:
            _read_small(file, binary=True)
        except ValueError as exc:
            out.add(("daemon", name), str(exc))
            unreadable = True
    if unreadable:
        return
    _check_tls_pair(cert, key, out)


def _check_tls_pair(cert: Path, key: Path, out: Collector) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    def no_password() -> bytes:
        raise ValueError("encrypted")  # never prompt on the terminal: a daemon has nobody to type it

    try:
        context.load_cert_chain(cert, key, password=no_password)
    except (ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None)
        if reason == "KEY_VALUES_MISMATCH":
            out.add(("daemon", "tls_key_file"), f"{key} is not the private key of {cert}; name the key it was made for")
        elif "encrypted" in str(exc) or "bad decrypt" in str(exc):
            out.add(
                ("daemon", "tls_key_file"),
                f"{key} is encrypted with a passphrase; healerd needs an unencrypted key (keep it chmod 600)",
            )
        else:
            out.add(
                ("daemon", "tls_cert_file"),
                f"cannot load {cert} and {key} as a PEM certificate (with its chain) and its private key"
                f"{f' ({reason})' if reason and reason != 'PEM lib' else ''}; convert them to PEM",
            )


def _read_small(path: Path, binary: bool = False, limit: int = 1 << 20) -> str:
    """A small file's text; ValueError with a message naming the fix when it is missing, huge or not text."""
    try:
        with path.open("rb") as f:
            content = f.read(limit + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(content) > limit:
        raise ValueError(f"{path} is larger than {_yaml.size_text(limit)}; is this the right file?")
    if binary:
        return ""
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text; save it as UTF-8") from None


def check_exposure(
    listen: str, host: str, token: Path | None, out: Collector, warnings: list[str], filename: str
) -> None:
    """A listen host that does not resolve is a warning (the name may come later: DHCP, a VPN); one that is
    not loopback needs a token, or anyone who can reach it controls the fleet."""
    path = ("daemon", "listen")
    ip = ip_or_none(host)
    if host == "localhost":
        loopback = True
    elif ip is not None:
        loopback = ip.is_loopback
    else:
        try:
            addresses = _resolve_host(host)
        except OSError as exc:
            why = exc.strerror or str(exc)
            problem = Problem(
                path,
                f"host {host!r} does not resolve ({why}); healerd run cannot listen until it does; "
                "fix the name or listen on an IP address",
                out.index.line(path),
            )
            warnings.append(problem.render(filename))
            addresses = []
        loopback = bool(addresses) and all(a.is_loopback for a in map(ipaddress.ip_address, addresses))
    if not loopback and token is None:
        out.add(
            path,
            f"listening on {listen} without credentials lets anyone on the network control the fleet; set "
            "daemon.access_file (healerd access add NAME --scope admin) or daemon.api_token_file, or listen on "
            "127.0.0.1",
        )


def _resolve_host(host: str, timeout: float = 2.0) -> list[str]:
    """The addresses of `host`, asking the resolver at most `timeout` seconds (getaddrinfo has no timeout of
    its own: it runs in a thread that is left to finish by itself if it hangs). OSError when it fails."""
    found: list[str] = []
    failed: list[OSError] = []

    def resolve() -> None:
        try:
            found.extend(str(info[4][0]).partition("%")[0] for info in socket.getaddrinfo(host, None))
        except OSError as exc:
            failed.append(exc)

    worker = threading.Thread(target=resolve, name=f"resolve {host}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"no answer from the resolver within {timeout:g}s")
    if failed:
        raise failed[0]
    return found


def file_problem(path: Path, what: str = "the value") -> str | None:
    """What is wrong with a small secret file (missing, unreadable, huge, not text, empty), or None."""
    try:
        text = _read_small(path, limit=16384)
    except ValueError as exc:
        return str(exc)
    return None if text.strip() else f"{path} is empty; put {what} in it"


def folder_problem(path: Path) -> str | None:
    """Why healerd could not keep its state in the folder `path` (None when it can, or can create it)."""
    for at in (path, *path.parents):
        try:
            if at.is_dir():
                return None
            found = at.exists()
        except OSError as exc:  # a name too long, a loop of links
            return f"{at} cannot be used as a folder: {exc.strerror or exc}; set state_dir to a folder"
        if found:
            if at == path:
                return f"{path} is a file, not a folder; set state_dir to a folder (healerd creates it if missing)"
            return f"{at} is a file, so the folder {path} cannot be made in it; set state_dir to a folder elsewhere"
    return None
