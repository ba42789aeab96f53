"""The PostgreSQL connection string of `cluster.store`: read by libpq's own parser, as the store will read it,
and never shown with its password, even when it does not parse."""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

MASK = "***"
MAX_LENGTH = 4096
#: how much of a (masked) connection string a message quotes
SHOWN_MAX = 120

_SCHEMES = ("postgresql://", "postgres://")
_QUOTED = re.compile(r"\"([^\"]*)\"|'([^']*)'")
_SPACE = " \t\n\r\f\v"

PERCENT_FIX = (
    "percent-encode the password's special characters (% as %25, @ as %40, / as %2F, : as %3A, a space as %20), "
    "or leave the password out and put it in ~/.pgpass"
)
SHAPES = "postgresql://user@host:port/database, or key=value pairs like host=db.example dbname=healerd user=healerd"
#: the target_session_attrs that connect only to a server that accepts writes (libpq's names)
WRITABLE_SESSIONS = ("read-write", "primary")
#: the ones that may, or must, connect to a standby: the store would fail on every write there
READ_ONLY_SESSIONS = ("read-only", "standby", "prefer-standby")

Span = tuple[int, int]


@functools.cache
def _plain_keys() -> frozenset[str]:
    """The parameters whose values libpq itself shows (not `password`, `sslpassword` and the like: libpq marks
    those); the value of any other key, a misspelt `passwrd` among them, is hidden."""
    return frozenset(o.keyword.decode() for o in pq.Conninfo.get_defaults() if not o.dispchar)


def _is_uri(dsn: str) -> bool:
    return dsn.startswith(_SCHEMES)  # as libpq tells them


def _uri_spans(dsn: str) -> list[Span]:
    start = dsn.index("//") + 2
    spans: list[Span] = []
    at = dsn.rfind("@", start)  # the last '@': a password may hold an unencoded one
    if at >= 0 and (colon := dsn.find(":", start, at)) >= 0:
        spans.append((colon + 1, at))
    query = dsn.find("?", max(at, start))
    if query >= 0:
        pos = query + 1
        for param in dsn[query + 1 :].split("&"):
            key, eq, _ = param.partition("=")
            if not eq:
                spans.append((pos, pos + len(param)))
            elif unquote(key) not in _plain_keys():
                spans.append((pos + len(key) + 1, pos + len(param)))
            pos += len(param) + 1
    return spans


def _kv_spans(dsn: str) -> list[Span]:
    """The values of key=value pairs that may be secret, read as libpq reads them but leniently: an unterminated
    quote runs to the end, and a word without `=` (a password whose key was forgotten?) is hidden whole."""
    spans: list[Span] = []
    i, n = 0, len(dsn)

    def skip_space(j: int) -> int:
        while j < n and dsn[j] in _SPACE:
            j += 1
        return j

    def word_end(j: int) -> int:
        while j < n and dsn[j] not in _SPACE:
            j += 2 if dsn[j] == "\\" else 1
        return min(j, n)

    while (i := skip_space(i)) < n:
        key_start = i
        while i < n and dsn[i] not in _SPACE and dsn[i] != "=":
            i += 1
        key = dsn[key_start:i]
        i = skip_space(i)
        if i >= n or dsn[i] != "=":
            if key not in _plain_keys():
                spans.append((key_start, key_start + len(key)))
            continue
        i = skip_space(i + 1)
        value_start = i
        if i < n and dsn[i] == "'":
            i += 1
            while i < n and dsn[i] != "'":
                i += 2 if dsn[i] == "\\" else 1
            i = min(i + 1, n)
        else:
            i = word_end(i)
        if key not in _plain_keys() and i > value_start:
            spans.append((value_start, i))
    return spans


def _spans(dsn: str) -> list[Span]:
    return _uri_spans(dsn) if _is_uri(dsn) else _kv_spans(dsn)


def hidden_parts(dsn: str) -> list[str]:
    """Every text of `dsn` that is, or may be, a secret (longest first), as written and as decoded."""
    found: list[str] = []
    for a, b in _spans(dsn):
        text = dsn[a:b]
        found += [text, unquote(text)]
        if text.startswith("'"):
            found.append(re.sub(r"\\(.)", r"\1", text.strip("'")))
        if _is_uri(dsn) and "@" in text:
            found.append(text.partition("@")[0])  # libpq's own reading ends at the first '@'
    return sorted({p for p in found if p}, key=len, reverse=True)


def redact(dsn: str) -> str:
    """The connection string with its password masked, in its own shape: postgresql://healerd:***@db/healerd."""
    text, last = [], 0
    for a, b in sorted(_spans(dsn)):
        if a >= last:
            text += [dsn[last:a], MASK]
            last = b
    return mask("".join([*text, dsn[last:]]), dsn)  # the password written elsewhere too (in the port, say)


def mask(text: str, dsn: str) -> str:
    """`text` (a message about `dsn`, libpq's among them) with whatever may be a secret of `dsn` masked: a quoted
    token that is part of one, and every occurrence of one long enough not to be a common word."""
    parts = hidden_parts(dsn)
    if not parts:
        return text

    def token(m: re.Match[str]) -> str:
        inner = m[1] if m[1] is not None else m[2]
        quote = m[0][0]
        if inner and any(inner in p for p in parts):
            return f"{quote}{MASK}{quote}"
        for p in parts:
            inner = inner.replace(p, MASK)
        return f"{quote}{inner}{quote}"

    text = _QUOTED.sub(token, text)
    for p in parts:
        if len(p) >= 4:
            text = text.replace(p, MASK)
    return text


def shown(dsn: str) -> str:
    """The masked connection string as a message quotes it (a long one is cut)."""
    text = redact(dsn)
    return text if len(text) <= SHOWN_MAX else text[: SHOWN_MAX - 3] + "..."


def dsn_problem(dsn: str) -> str | None:
    """Why the store could not use `dsn` as its connection string (None when it can), read the way the store
    reads it: by libpq's own parser. The message never holds the password."""
    if len(dsn) > MAX_LENGTH:
        return (
            f"the connection string is {len(dsn):,} characters long, more than {MAX_LENGTH:,} ({shown(dsn)}); "
            f"is this the right value? Write it like {SHAPES}"
        )
    if not dsn.strip():
        return f"the connection string is empty; write it like {SHAPES}"
    if not _is_uri(dsn) and (scheme := re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", dsn)):
        return (
            f"expected a PostgreSQL connection string, starting with postgresql://, not {scheme[0]}; "
            f"write it like {SHAPES}"
        )
    if not _is_uri(dsn) and "=" not in dsn:
        return (
            f"expected a PostgreSQL connection string (this is not shown: it may be a password); write it like {SHAPES}"
        )
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        reason = mask(str(exc).strip().replace("\n", " "), dsn)
        if "percent" in reason or "spaces" in reason:
            fix = PERCENT_FIX
        elif "option" in reason or "query parameter" in reason:
            fix = "use the parameter names libpq knows (host, port, dbname, user, sslmode, connect_timeout, ...)"
        else:
            fix = f"write it like {SHAPES}"
        return f"libpq cannot read the connection string {shown(dsn)}: {reason}; {fix}"
    # an unencoded '/' or '@' of the password leaves part of it in the host, port or database name, where a failed
    # connection would show it
    stray = next((k for k in ("host", "port", "dbname") if "@" in str(parts.get(k) or "")), None)
    if _is_uri(dsn) and stray:
        return f"the connection string {shown(dsn)} holds an '@' in its {stray}: {PERCENT_FIX}"
    for port in str(parts.get("port") or "").split(","):
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            return (
                f"the connection string {shown(dsn)} names port {mask(repr(port), dsn)}, which is not a port from 1 to "
                f"65535; fix the port (if it is part of the password, {PERCENT_FIX})"
            )
    return _session_problem(dsn, parts)


def _session_problem(dsn: str, parts: dict[str, str | int | None]) -> str | None:
    """A list of servers must say to connect to the writable one only: libpq takes the first that answers, a
    standby among them, where every write of the store would fail."""
    attrs = str(parts["target_session_attrs"]) if parts.get("target_session_attrs") is not None else None
    said = mask(attrs, dsn) if attrs else None
    if attrs is None:
        where = (
            f"{'&' if '?' in dsn else '?'}target_session_attrs=read-write at the end"
            if _is_uri(dsn)
            else "target_session_attrs=read-write among the key=value pairs"
        )
        fix = f"add {where}"
    else:
        fix = f"write target_session_attrs=read-write (or primary) instead of {said}"
    fix += ": libpq then tries the servers in turn and keeps the one that accepts writes"
    if attrs in READ_ONLY_SESSIONS:
        return (
            f"the connection string {shown(dsn)} asks for target_session_attrs={said}, a server that may not accept "
            f"writes, and every node writes to the store; {fix}"
        )
    servers = max(len(str(parts.get(k) or "").split(",")) for k in ("host", "hostaddr"))
    if servers > 1 and attrs not in WRITABLE_SESSIONS:
        return (
            f"the connection string {shown(dsn)} names {servers} servers with "
            f"{f'target_session_attrs={said}' if said else 'no target_session_attrs'}: a node could connect to a "
            f"read-only standby and fail on every write; {fix}"
        )
    return None
