"""Named, scoped, revocable API credentials: the access file (scrypt hashes, never a token), the changes
`healerd access` makes to it, and the book the daemon checks bearer tokens against (docs/security.md#credentials)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml

from . import _yaml

log = structlog.get_logger("healerd.access")


class Scope(enum.StrEnum):
    READ = "read"
    OPERATE = "operate"
    ADMIN = "admin"
    ALERTS = "alerts"
    CLUSTER = "cluster"


#: what each scope may do: admin ⊃ operate ⊃ read; alerts and cluster are separate, each only its own
_GRANTED: dict[Scope, frozenset[Scope]] = {
    Scope.READ: frozenset({Scope.READ}),
    Scope.OPERATE: frozenset({Scope.OPERATE, Scope.READ}),
    # admin may do anything: the one token of api_token_file still posts alerts and serves the nodes' probes
    Scope.ADMIN: frozenset(Scope),
    Scope.ALERTS: frozenset({Scope.ALERTS}),
    Scope.CLUSTER: frozenset({Scope.CLUSTER}),
}


def grants(held: Scope, needed: Scope) -> bool:
    """Whether a credential of scope `held` may do what needs `needed`."""
    return needed in _GRANTED[held]


@dataclass(frozen=True)
class Credential:
    name: str
    scope: Scope
    created: float
    #: when it stops being accepted (epoch seconds); None: never
    expires: float | None

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


class AccessError(Exception):
    """A user's mistake (a bad name, a taken one, a file that cannot be read or written); the message names the
    problem and the fix."""


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_NAME_RULE = "a name is 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
#: the credential `daemon.api_token_file` stands for
LEGACY_NAME = "token"
#: tokens are `hk_<name>_<secret>`: verify finds the entry by name and computes one hash
_PREFIX = "hk_"
_SECRET_CHARS = 43  # secrets.token_urlsafe(32)
_MAX_TOKEN = len(_PREFIX) + 63 + 1 + _SECRET_CHARS
#: scrypt's cost for new entries: 16 MiB and tens of milliseconds per guess (RFC 7914's interactive figures)
_N, _R, _P = 2**14, 8, 1
_SALT_BYTES, _KEY_BYTES = 16, 32
#: verified tokens remembered (sha256 of the token -> name); only successes, so a flood of bad tokens adds none
CACHE_SIZE = 10_000
_KEYS = ("name", "scope", "created", "expires", "kdf", "n", "r", "p", "salt", "hash")
_HEADER = (
    "# healerd credentials, changed with `healerd access add|revoke`. Tokens are not kept here, only scrypt hashes.\n"
)


@dataclass(frozen=True)
class _Entry:
    credential: Credential
    n: int
    r: int
    p: int
    salt: bytes
    hash: bytes

    def matches(self, token: bytes) -> bool:
        return hmac.compare_digest(_kdf(token, self.salt, self.n, self.r, self.p, len(self.hash)), self.hash)

    def as_dict(self) -> dict[str, Any]:
        c = self.credential
        return {
            "name": c.name,
            "scope": str(c.scope),
            "created": c.created,
            "expires": c.expires,
            "kdf": "scrypt",
            "n": self.n,
            "r": self.r,
            "p": self.p,
            "salt": base64.b64encode(self.salt).decode(),
            "hash": base64.b64encode(self.hash).decode(),
        }


def _kdf(token: bytes, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    return hashlib.scrypt(token, salt=salt, n=n, r=r, p=p, dklen=size, maxmem=256 * r * (n + p + 2))


def _name_of(token: str) -> str | None:
    """The credential name inside a token `hk_<name>_<43 characters>`; None when it is not shaped so."""
    if len(token) > _MAX_TOKEN or not token.startswith(_PREFIX) or len(token) < len(_PREFIX) + 2 + _SECRET_CHARS:
        return None
    if token[-_SECRET_CHARS - 1] != "_":
        return None
    return token[len(_PREFIX) : -_SECRET_CHARS - 1]


def _check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        fixed = re.sub(r"^[^A-Za-z0-9]+", "", re.sub(r"[^A-Za-z0-9._-]+", "-", name))[:63]
        hint = f", e.g. {fixed!r}" if fixed and fixed != name else ""
        raise AccessError(f"credential name {name[:100]!r} cannot be used: {_NAME_RULE}{hint}")
    if name == LEGACY_NAME:
        raise AccessError(f"the name {LEGACY_NAME!r} is taken by daemon.api_token_file's token; choose another name")


# -- the access file ---------------------------------------------------------------------------------------


def _where(path: Path, line: int | None) -> str:
    return f"{path}:{line}" if line else str(path)


def _read(path: Path) -> dict[str, _Entry]:
    """The entries of the access file by name; a file that does not exist holds none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise AccessError(
            f"cannot read the access file {path}: {getattr(exc, 'strerror', None) or exc}; "
            "run as the user healerd runs as, or root"
        ) from None
    fix = "fix it, or move it aside and add the credentials again with `healerd access add`"
    try:
        data, index = _yaml.load(text)
    except _yaml.YamlSyntaxError as exc:
        raise AccessError(f"{_where(path, exc.line)}: {exc}; {fix}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("credentials"), list):
        raise AccessError(f"{path} is not a healerd access file (`version: 1` and a `credentials:` list); {fix}")
    out: dict[str, _Entry] = {}
    for i, item in enumerate(data["credentials"]):
        where = f"{_where(path, index.line(('credentials', i)))}: credentials[{i}]"
        try:
            entry = _entry(item)
        except ValueError as exc:
            raise AccessError(f"{where}: {exc}; {fix}") from None
        if entry.credential.name in out:
            raise AccessError(f"{where}: the name {entry.credential.name!r} appears twice; {fix}")
        out[entry.credential.name] = entry
    return out


def _entry(item: object) -> _Entry:
    if not isinstance(item, dict):
        raise ValueError(f"expected a mapping with {', '.join(_KEYS)}")
    missing = [k for k in _KEYS if k not in item]
    unknown = [str(k) for k in item if k not in _KEYS]
    if missing or unknown:
        said = [f"missing {', '.join(missing)}"] * bool(missing) + [f"unknown {', '.join(unknown)}"] * bool(unknown)
        raise ValueError("; ".join(said))
    name = item["name"]
    if not isinstance(name, str) or not NAME.fullmatch(name) or name == LEGACY_NAME:
        raise ValueError(f"name {str(name)[:100]!r}: {_NAME_RULE}, and not {LEGACY_NAME!r}")
    if item["scope"] not in [s.value for s in Scope]:
        raise ValueError(f"scope {str(item['scope'])[:40]!r} is none of {', '.join(Scope)}")
    if item["kdf"] != "scrypt":
        raise ValueError(f"kdf {str(item['kdf'])[:40]!r}: only scrypt is known")
    n, r, p = (_whole(item, "n", 2**10, 2**17), _whole(item, "r", 1, 16), _whole(item, "p", 1, 4))
    if n & (n - 1):
        raise ValueError(f"n {n} is not a power of 2")
    return _Entry(
        Credential(
            name,
            Scope(item["scope"]),
            _time(item, "created"),
            _time(item, "expires") if item["expires"] is not None else None,
        ),
        n,
        r,
        p,
        _bytes(item, "salt", 16, 64),
        _bytes(item, "hash", 16, 64),
    )


def _whole(item: dict[Any, Any], key: str, low: int, high: int) -> int:
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} {str(value)[:40]!r} is not a whole number from {low} to {high}")
    return value


def _time(item: dict[Any, Any], key: str) -> float:
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 2**40:
        raise ValueError(f"{key} {str(value)[:40]!r} is not a time in seconds since the epoch")
    return float(value)


def _bytes(item: dict[Any, Any], key: str, low: int, high: int) -> bytes:
    try:
        value = base64.b64decode(str(item[key]), validate=True)
    except (binascii.Error, ValueError):
        value = b""
    if not low <= len(value) <= high:
        raise ValueError(f"{key} is not {low} to {high} bytes in base64")
    return value


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` by a file holding `data`, mode 0600, owned as the file it replaces: readers see the old
    file or the new one, never half of one, and a power cut leaves one of the two."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            with contextlib.suppress(FileNotFoundError):
                old = path.stat()
                if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                    os.fchown(f.fileno(), old.st_uid, old.st_gid)  # root editing the healerd user's file
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)  # the rename itself survives a power cut
    finally:
        os.close(folder)


@contextlib.contextmanager
def _editing(path: Path) -> Iterator[dict[str, _Entry]]:
    """The access file's entries to change in place, written back if they changed; two commands at once take
    turns (a lock file beside it), so neither loses the other's change."""
    try:
        lock = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise AccessError(_cannot_write(path, exc)) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = _read(path)
        before = list(entries.values())
        yield entries
        if list(entries.values()) != before:
            try:
                text = _HEADER + yaml.safe_dump(
                    {"version": 1, "credentials": [e.as_dict() for e in entries.values()]}, sort_keys=False
                )
                _atomic_write(path, text.encode())
            except OSError as exc:
                raise AccessError(_cannot_write(path, exc)) from None
    finally:
        os.close(lock)


def _cannot_write(path: Path, exc: OSError) -> str:
    return (
        f"cannot change the access file {path}: {exc.strerror or exc}; run as its owner (the user healerd runs as) "
        "or root, in a folder that exists"
    )


def add(path: Path, name: str, scope: Scope, *, expires: float | None = None, now: float | None = None) -> str:
    """Add a credential to the access file and return its token, which is kept nowhere: show it once."""
    _check_name(name)
    now = time.time() if now is None else now
    if expires is not None and expires <= now:
        raise AccessError(f"credential {name!r} would expire before it is added; give an expiry in the future")
    token = f"{_PREFIX}{name}_{secrets.token_urlsafe(32)}"
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _kdf(token.encode(), salt, _N, _R, _P, _KEY_BYTES)
    entry = _Entry(Credential(name, scope, now, expires), _N, _R, _P, salt, key)
    with _editing(path) as entries:
        if name in entries:
            raise AccessError(
                f"a credential named {name!r} is already in {path}; run `healerd access revoke {name}` first, "
                "or choose another name"
            )
        entries[name] = entry
    return token


def revoke(path: Path, name: str) -> bool:
    """Remove the credential; False when there is none of that name. A running daemon refuses it at its next
    look at the file (within a second)."""
    with _editing(path) as entries:
        return entries.pop(name, None) is not None


def _read_usage(path: Path) -> dict[str, tuple[float, str]]:
    """name -> (last used, from where) from the usage file; raises OSError or ValueError when it is damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    seen = data.get("credentials") if isinstance(data, dict) else None
    if not isinstance(seen, dict):
        raise ValueError(f"{path} is not a healerd usage file")
    return {
        str(name): (float(u["last_used"]), str(u["last_from"]))
        for name, u in seen.items()
        if isinstance(u, dict) and isinstance(u.get("last_used"), int | float)
    }


def listing(path: Path, usage: Path | None) -> list[dict[str, Any]]:
    """Every credential of the access file with when and from where it was last used."""
    entries = _read(path)
    try:
        used = _read_usage(usage) if usage is not None else {}
    except (OSError, ValueError):
        used = {}  # only bookkeeping, rewritten by the daemon within seconds: the credentials still list
    rows = []
    for name, entry in entries.items():
        c = entry.credential
        last = used.get(name)
        rows.append(
            {
                "name": name,
                "scope": str(c.scope),
                "created": c.created,
                "expires": c.expires,
                "last_used": last[0] if last else None,
                "last_from": last[1] if last else None,
            }
        )
    return rows


# -- the daemon's view ---------------------------------------------------------------------------------------


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class AccessBook:
    """The credentials the daemon accepts: the access file (re-read when it changes) plus, when set,
    `api_token_file` as one `admin` credential named `token`.

    Building one reads the file: an unreadable or malformed one raises AccessError (the daemon must not start
    with credentials it cannot read); a missing one holds no credentials until it is created."""

    def __init__(self, path: Path | None, *, token: str | None = None, usage: Path | None = None) -> None:
        self._path = path
        self._token = token.encode() if token else None
        self._legacy = Credential(LEGACY_NAME, Scope.ADMIN, 0.0, None)
        self._usage_path = usage
        self._stat = _stat(path) if path is not None else None
        #: (generation, entries), replaced as one so that a verify never pairs one file's entries with another's
        self._state: tuple[int, dict[str, _Entry]] = (0, _read(path) if path is not None else {})
        self._cache: dict[bytes, tuple[str, int]] = {}
        self._cache_lock = threading.Lock()  # verify may run in worker threads (scrypt takes tens of ms)
        self._bad: str | None = None
        self._usage_failing = False
        self._usage: dict[str, tuple[float, str]] = {}
        if usage is not None:
            try:
                self._usage = _read_usage(usage)
            except (OSError, ValueError) as exc:
                log.warning("access usage file unreadable; last uses start afresh", path=str(usage), error=str(exc))
        self._dirty = False

    @property
    def configured(self) -> bool:
        """Any credential at all (file with entries, or the token)."""
        return bool(self._state[1]) or self._token is not None

    def known(self, token: str, now: float) -> tuple[bool, Credential | None]:
        """(True, its credential) when `token` is answered without hashing it (the legacy token, a verified
        token in the cache, a token naming no credential); (False, None) when `verify` must hash it (~30 ms:
        the API does that off its event loop)."""
        raw = token.encode(errors="replace")
        if self._token is not None and hmac.compare_digest(raw, self._token):
            return True, self._legacy
        name = _name_of(token)
        generation, entries = self._state
        if name is None or name not in entries:
            return True, None
        cached = self._cache.get(hashlib.sha256(raw).digest())
        if cached is not None and cached[1] == generation and cached[0] in entries:
            credential = entries[cached[0]].credential
            return True, None if credential.expired(now) else credential
        return False, None

    def verify(self, token: str, now: float) -> Credential | None:
        """The credential `token` belongs to; None when it is unknown, wrong, revoked or expired."""
        raw = token.encode(errors="replace")
        if self._token is not None and hmac.compare_digest(raw, self._token):
            return self._legacy
        name = _name_of(token)
        if name is None:
            return None
        generation, entries = self._state
        key = hashlib.sha256(raw).digest()
        cached = self._cache.get(key)
        if cached is not None and cached[1] == generation and cached[0] in entries:
            credential = entries[cached[0]].credential
            return None if credential.expired(now) else credential
        entry = entries.get(name)
        if entry is None or entry.credential.expired(now) or not entry.matches(raw):
            return None
        with self._cache_lock:
            if len(self._cache) >= CACHE_SIZE:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = (name, generation)
        return entry.credential

    def refresh(self) -> bool:
        """Re-read the file if its (mtime_ns, size, inode) changed; True when it did. A file that cannot be
        used is logged once and the last good credentials stay; a deleted file holds none."""
        if self._path is None:
            return False
        try:
            stat = _stat(self._path)
            if stat == self._stat:
                return False
            self._stat = stat
            entries = _read(self._path) if stat is not None else {}
        except (OSError, AccessError) as exc:
            message = str(exc) if isinstance(exc, AccessError) else f"{self._path}: {exc.strerror or exc}"
            if message != self._bad:
                self._bad = message
                log.error("access file unusable, keeping the last good credentials", error=message)
            return False
        if self._bad is not None:
            self._bad = None
            log.info("access file usable again", path=str(self._path))
        with self._cache_lock:
            self._state = (self._state[0] + 1, entries)
            self._cache.clear()
        log.info("access file read", path=str(self._path), credentials=len(entries))
        return True

    async def watch(self, interval: float = 1.0) -> None:
        """Refresh every `interval` seconds until cancelled: a revoked credential is refused within it."""
        while True:
            self.refresh()
            await asyncio.sleep(interval)

    def used(self, name: str, address: str, now: float) -> None:
        """Remember that credential `name` was used from `address` (kept in memory until save_usage)."""
        self._usage[name] = (now, address)
        self._dirty = True

    def save_usage(self) -> None:
        """Write the usage file if anything changed since the last write; a failure is logged once and retried
        at the next call."""
        if self._usage_path is None or not self._dirty:
            return
        self._dirty = False
        known = set(self._state[1]) | {LEGACY_NAME}
        self._usage = {name: u for name, u in dict(self._usage).items() if name in known}
        data = {"version": 1, "credentials": {n: {"last_used": t, "last_from": a} for n, (t, a) in self._usage.items()}}
        try:
            _atomic_write(self._usage_path, (json.dumps(data, indent=2) + "\n").encode())
        except OSError as exc:
            self._dirty = True
            if not self._usage_failing:
                self._usage_failing = True
                log.warning("cannot write the access usage file", path=str(self._usage_path), error=str(exc))
            return
        if self._usage_failing:
            self._usage_failing = False
            log.info("access usage file written again", path=str(self._usage_path))


#: the access file is looked at this often: a revocation applies within it
REFRESH = 1.0
#: turns of REFRESH between writes of when each credential was last used
USAGE_EVERY = 5


async def keep(book: Callable[[], AccessBook]) -> None:
    """The daemon's side of the access file, until cancelled: the book in force (a reload may replace it)
    re-reads the file within REFRESH of a change, and writes its usage file every few seconds."""
    turns = 0
    while True:
        await asyncio.sleep(REFRESH)
        turns += 1
        current = book()
        try:
            current.refresh()
            if turns % USAGE_EVERY == 0:
                await asyncio.to_thread(current.save_usage)
        except OSError as exc:  # a file that cannot be read or written: the last good credentials apply
            log.warning("the access file or its usage record cannot be used now", error=str(exc))
