"""Configuration: YAML -> validated, typed models. Every problem is reported at once, with path and line."""

from __future__ import annotations

import contextvars
import hashlib
import ipaddress
import json
import math
import os
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from . import _yaml
from ._yaml import format_path
from .checks import Check, CheckEnv, CheckOptions
from .durations import DAY, YEAR, parse_count_or_percent, parse_duration
from .modes import Mode as Mode  # re-exported
from .notifiers.base import read_secret
from .paths import resolve_against, set_config_dir
from .paths import resolve_path as resolve_path  # re-exported: the name healerd.config.resolve_path stays
from .playbooks import load_playbooks
from .plugins import CHECK_KINDS, NOTIFIER_KINDS, PROVIDER_KINDS, ROTATION_KINDS
from .results import Status
from .targets import SERVICE_TEMPLATE_FIELDS, TEMPLATE_FIELDS, did_you_mean, find_template_problems

Loc = tuple[str | int, ...]
#: what checks see at validation (check_paths, the config's folder), for their preflight
_CHECK_ENV: contextvars.ContextVar[CheckEnv] = contextvars.ContextVar("healerd_config_check_env")


@dataclass(frozen=True)
class Problem:
    path: Loc
    message: str
    line: int | None = None

    def render(self, filename: str) -> str:
        where = f"{filename}:{self.line}" if self.line else filename
        return f"{where}: {format_path(self.path) or '(top level)'}: {self.message}"


class ConfigError(Exception):
    """A config that cannot be used, with every problem found."""

    def __init__(self, filename: str, problems: list[Problem]) -> None:
        self.filename = filename
        self.problems = sorted(problems, key=lambda p: p.line or 0)
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"{self.filename}: {n} problem{'s' if n != 1 else ''} found"
        return "\n".join([head, *("  " + p.render(self.filename) for p in self.problems)])


# ---------------------------------------------------------------------------------------------------------
# Names. Services, providers, images, versions, notifiers and machines name files and folders (state,
# rotation files, evidence bundles), so a name is one safe path component.

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_CHECK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")  # ':' for virtual checks like alert:<name>
NAME_RULE = "1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit, without '..'"


def name_problem(name: str, what: str, check: bool = False) -> str | None:
    """Why `name` cannot name a `what` (None when it can)."""
    if (_CHECK_NAME if check else _NAME).match(name) and ".." not in name:
        return None
    rule = NAME_RULE.replace("or '-'", "'-' or ':'") if check else NAME_RULE
    fixed = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.:-]+" if check else r"[^A-Za-z0-9_.-]+", "-", name))
    fixed = re.sub(r"^[^A-Za-z0-9]+", "", fixed)[:63]
    hint = f", e.g. {fixed!r}" if fixed and fixed != name else ""
    return f"{what} name {name!r} cannot be used: names are {rule} (they become file names); rename it{hint}"


# ---------------------------------------------------------------------------------------------------------
# Models. Durations are stored as float seconds; paths are resolved against the config file's folder.


def _duration(v: object, info: ValidationInfo, at_most: float = YEAR) -> float:
    return parse_duration(v, at_most=at_most, what=info.field_name or "duration")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _host_header(v: str) -> str:
    """A Host header value the API should accept: a name or address, IPv6 in brackets, an optional port."""
    m = re.fullmatch(r"(\[([0-9A-Fa-f:.]+)\]|[A-Za-z0-9][A-Za-z0-9._-]*)(?::(\d{1,5}))?", v)
    if len(v) > 255 or m is None or (m[2] and _ip(m[2]) is None) or (m[3] and int(m[3]) > 65535):
        raise ValueError(
            f"{v!r} is not a Host header value; write a host name or address, with an optional port, "
            "like healerd.example.com, 10.0.0.5:9464 or [fd00::5]:9464"
        )
    return v.lower()


class DaemonConfig(Strict):
    listen: str = "127.0.0.1:9464"
    state_dir: Path = Path("./.healerd")
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    api_token_file: Path | None = None
    mode: Mode = Mode.AUTO
    check_paths: list[Path] = Field(default_factory=lambda: [Path("./checks")])
    playbook_paths: list[Path] = Field(default_factory=lambda: [Path("./playbooks")])
    #: How many checks may run at once across the whole fleet.
    max_concurrent_checks: int = Field(default=5000, ge=1, le=100_000)
    #: Recent results kept per machine and check (in memory and in the store); flap detection needs 21.
    history: int = Field(default=30, ge=21, le=1000)
    #: Events kept in the store's event log.
    event_log_size: int = Field(default=100_000, ge=100, le=10_000_000)
    #: Host header values the API accepts besides its listen address (a guard against DNS rebinding).
    allowed_hosts: list[Annotated[str, AfterValidator(_host_header)]] = Field(default_factory=list, max_length=100)
    #: Serve the API over HTTPS with this certificate (PEM, with its chain) and unencrypted key; both or neither.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
            raise ValueError(f"expected host:port like 127.0.0.1:9464, got {v!r}")
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if _ip(bare) is None and not _HOSTNAME.fullmatch(bare):
            raise ValueError(
                f"{host!r} is not an IP address or a host name; listen on an address like 127.0.0.1:9464 or [::1]:9464"
            )
        return v

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class CheckCommon(BaseModel):
    """Fields every check has whatever its kind; the kind's own fields are validated by the kind."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    name: str
    kind: str
    interval: float = 10.0
    timeout: float | None = None
    retry_interval: float | None = None
    fall: int = Field(default=3, ge=1, le=100)
    rise: int = Field(default=2, ge=1, le=100)
    flap_low: float = Field(default=20.0, ge=0, le=100)
    flap_high: float = Field(default=30.0, ge=0, le=100)
    #: what a run that does not finish within `timeout` means; default: the kind's (critical for http/tcp)
    timeout_status: Literal["critical", "unknown"] | None = None
    #: a check UNKNOWN this long raises a `check.unknown` alert (it cannot decide: on-call must see it)
    unknown_alert_after: float = 300.0

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        problem = name_problem(v, "check", check=True)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("interval", "timeout", "retry_interval", mode="before")
    @classmethod
    def _per_day(cls, v: object, info: ValidationInfo) -> float | None:
        return None if v is None else _duration(v, info, at_most=DAY)

    @field_validator("unknown_alert_after", mode="before")
    @classmethod
    def _durations(cls, v: object, info: ValidationInfo) -> float:
        return _duration(v, info)

    @field_validator("interval")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v < 0.05:
            raise ValueError("interval must be at least 50ms")
        return v

    @model_validator(mode="after")
    def _relations(self) -> CheckCommon:
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout must be greater than 0")
        if self.timeout is not None and self.timeout > self.interval:
            raise ValueError(
                f"timeout ({self.timeout:g}s) is longer than interval ({self.interval:g}s); "
                "shorten the timeout or lengthen the interval"
            )
        if self.flap_low > self.flap_high:
            raise ValueError("flap_low must not exceed flap_high")
        return self


@dataclass(frozen=True)
class CheckSpec:
    """A validated check: common scheduling/classification fields plus the kind's typed options."""

    name: str
    kind: str
    interval: float
    timeout: float
    retry_interval: float | None
    fall: int
    rise: int
    flap_low: float
    flap_high: float
    options: CheckOptions
    check_class: type[Check[Any]]
    timeout_status: Status
    unknown_alert_after: float
    fingerprint: str  # changes whenever anything about the check changes (for reload diffs)


class MachineSpec(Strict):
    id: str
    address: str

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        problem = name_problem(v, "machine")
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"expected host:port like 10.0.0.5:8080 (port 1-65535), got {v!r}")
        return v


class RemediationConfig(Strict):
    """Per-service remediation policy and its safety gates (DESIGN §4)."""

    playbook: str = "replace-machine"
    mode: Mode | None = None  # overrides daemon.mode for this service
    max_concurrent: int = Field(default=1, ge=1, le=10_000)
    max_unhealthy: int | str = "50%"
    max_per_hour: int = Field(default=6, ge=0, le=3600)
    storm_cooldown: float = 300.0
    backoff: float = 60.0  # first wait after a failed remediation of a machine; doubles each time
    max_retries: int = Field(default=3, ge=0, le=100)  # failed attempts on one machine before a human is paged
    probation_timeout: float = 600.0  # for machines launched to fill the fleet (playbooks set their own)
    boot_timeout: float = 300.0  # a new machine's failures count only after it passed once or this elapsed
    keep_for: float | None = None  # quarantined machines are terminated after this (default: kept)
    keep_warning: float = 3600.0  # warn this long before keep_for ends a quarantine

    @field_validator("storm_cooldown", "backoff", "keep_warning", mode="before")
    @classmethod
    def _durations(cls, v: object, info: ValidationInfo) -> float:
        return _duration(v, info)

    @field_validator("probation_timeout", "boot_timeout", mode="before")
    @classmethod
    def _per_day(cls, v: object, info: ValidationInfo) -> float:
        return _duration(v, info, at_most=DAY)

    @field_validator("keep_for", mode="before")
    @classmethod
    def _keep(cls, v: object, info: ValidationInfo) -> float | None:
        return None if v is None else _duration(v, info)

    @field_validator("max_unhealthy")
    @classmethod
    def _max_unhealthy(cls, v: int | str) -> int | str:
        parse_count_or_percent(v)
        return v


class DiscoveryModel(Strict):
    """How a cloud provider finds the service's machines: an Auto Scaling group, or tags."""

    asg: str | None = None
    tags: dict[str, str] | None = None

    @model_validator(mode="after")
    def _one(self) -> DiscoveryModel:
        if self.asg is None and not self.tags:
            raise ValueError("discovery needs asg: <group name> or tags: {Key: value}")
        return self


class RotationModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    kind: str = "none"


class ImageModel(Strict):
    provider: str
    versions: dict[str, dict[str, Any]]
    known_good: str

    @model_validator(mode="after")
    def _known(self) -> ImageModel:
        if not self.versions:
            raise ValueError("an image needs at least one version under versions:")
        if self.known_good not in self.versions:
            raise ValueError(f"known_good {self.known_good!r} is not one of the versions ({', '.join(self.versions)})")
        return self


@dataclass(frozen=True)
class ImageConfig:
    name: str
    provider: str
    versions: dict[str, BaseModel]
    known_good: str


#: machines per service: desired, or the machines a static service lists
MAX_MACHINES = 10_000


class ServiceModel(Strict):
    provider: str
    image: str | None = None
    desired: int | None = Field(default=None, ge=0, le=MAX_MACHINES)
    min_healthy: int | str = 1
    machines: list[MachineSpec] = Field(default_factory=list, max_length=MAX_MACHINES)
    checks: list[dict[str, Any]] = Field(default_factory=list)
    service_checks: list[dict[str, Any]] = Field(default_factory=list)
    rotation: RotationModel = Field(default_factory=RotationModel)
    remediation: RemediationConfig = Field(default_factory=RemediationConfig)
    notify: list[str] = Field(default_factory=list)
    discovery: DiscoveryModel | None = None

    @field_validator("min_healthy")
    @classmethod
    def _min_healthy(cls, v: int | str) -> int | str:
        parse_count_or_percent(v)
        return v


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    provider: str
    desired: int
    min_healthy: int
    machines: tuple[MachineSpec, ...]
    checks: tuple[CheckSpec, ...]
    service_checks: tuple[CheckSpec, ...]
    image: str | None = None
    rotation_kind: str = "none"
    rotation: BaseModel | None = None
    remediation: RemediationConfig = field(default_factory=RemediationConfig)
    max_unhealthy: int = 1  # machines, resolved from the percentage against desired
    notify: tuple[str, ...] = ()
    discovery: dict[str, Any] | None = None

    @property
    def managed(self) -> bool:
        """True when healerd launches this service's machines (it has an image)."""
        return self.image is not None


@dataclass(frozen=True)
class NotifierConfig:
    name: str
    kind: str
    options: Any  # the notifier kind's options model


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    kind: str
    options: BaseModel


@dataclass(frozen=True)
class Config:
    path: Path
    daemon: DaemonConfig
    providers: dict[str, ProviderConfig]
    services: dict[str, ServiceConfig]
    images: dict[str, ImageConfig] = field(default_factory=dict)
    notifiers: dict[str, NotifierConfig] = field(default_factory=dict)
    check_kinds: dict[str, type[Check[Any]]] = field(default_factory=dict)
    #: not errors, but worth saying: validate and a reload print them
    warnings: tuple[str, ...] = ()

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def summary(self) -> str:
        def machines(s: ServiceConfig) -> int:
            return s.desired if s.managed else len(s.machines)

        n_machines = sum(machines(s) for s in self.services.values())
        n_checks = sum(len(s.checks) * max(machines(s), 1) + len(s.service_checks) for s in self.services.values())
        lines = [
            f"{self.path}: OK",
            f"  {len(self.services)} service(s), {n_machines} machine(s), {n_checks} check(s) per round, "
            f"{len(self.notifiers)} notifier(s), mode {self.daemon.mode.value}, listening on {self.daemon.listen}",
        ]
        for svc in self.services.values():
            checks = ", ".join(f"{c.name} ({c.kind} every {c.interval:g}s)" for c in svc.checks) or "none"
            healing = (
                f"heals from image {svc.image} (known good {self.images[svc.image].known_good}) with playbook "
                f"{svc.remediation.playbook}"
                if svc.image
                else "monitored and alerted only"
            )
            lines.append(
                f"  service {svc.name}: provider {svc.provider}, desired {svc.desired}, "
                f"min_healthy {svc.min_healthy}, checks: {checks}; {healing}"
                + (f"; notifies {', '.join(svc.notify)}" if svc.notify else "")
            )
        return "\n".join(lines)


TOP_LEVEL_KEYS = ("daemon", "providers", "images", "notifiers", "services")


# ---------------------------------------------------------------------------------------------------------
# Loading


class _Collector:
    def __init__(self, index: _yaml.LineIndex) -> None:
        self.index = index
        self.problems: list[Problem] = []

    def add(self, path: Loc, message: str) -> None:
        self.problems.append(Problem(path, message, self.index.line(path)))

    def numbers(self, prefix: Loc, model: BaseModel, raw: object) -> bool:
        """Add the numbers `model` accepted from `raw` that the user did not mean; True when there were none."""
        found = list(_misread_numbers(model, raw, prefix))
        for loc, message in found:
            self.add(loc, message)
        return not found

    def pydantic(self, prefix: Loc, exc: ValidationError, vocabulary: set[str]) -> None:
        for err in exc.errors(include_url=False):
            loc = (*prefix, *err["loc"])
            typ = err["type"]
            if typ == "extra_forbidden":
                key = str(err["loc"][-1]) if err["loc"] else "?"
                msg = f"unknown key {key!r}{did_you_mean(key, sorted(vocabulary))}; remove it or fix its spelling"
            elif typ == "missing":
                key = str(err["loc"][-1]) if err["loc"] else "?"
                msg = f"missing required key {key!r}"
                loc = loc[:-1] if err["loc"] else loc
                self.problems.append(Problem((*loc, key), msg, self.index.line(loc)))
                continue
            else:
                msg = err["msg"].removeprefix("Value error, ")
                if typ not in ("value_error", "assertion_error") and "input" in err:
                    msg += f" (got {err['input']!r})"
                if typ == "string_type" and isinstance(err.get("input"), int | float):
                    msg += "; put it in quotes to make it text"
            self.add(loc, msg)


def _misread_numbers(value: object, raw: object, path: Loc) -> Iterator[tuple[Loc, str]]:
    """Numbers a model accepted that cannot be meant: true/false where a number goes (pydantic, like Python,
    takes True for 1) and .nan/.inf (which every bound check lets through). Any model, plugins' too."""
    if isinstance(value, BaseModel):
        # declared fields only: the extra ones (a check's kind fields) are validated by a model of their own
        if isinstance(raw, dict):
            for name in type(value).model_fields:
                if name in raw:
                    yield from _misread_numbers(getattr(value, name), raw[name], (*path, name))
    elif isinstance(value, bool):
        return
    elif isinstance(value, int | float):
        if isinstance(raw, bool):
            yield path, f"expected a number, got {str(raw).lower()} (a boolean); write a number"
        elif not math.isfinite(value):
            yield path, f"expected a finite number, got {raw!r}; write a number"
    elif isinstance(value, list | tuple) and isinstance(raw, list):
        for i, (item, raw_item) in enumerate(zip(value, raw, strict=False)):
            yield from _misread_numbers(item, raw_item, (*path, i))
    elif isinstance(value, dict) and isinstance(raw, dict):
        for key, item in value.items():
            if key in raw:
                yield from _misread_numbers(item, raw[key], (*path, key))


def _vocabulary(*models: type[BaseModel]) -> set[str]:
    words: set[str] = set()
    for model in models:
        words.update(model.model_fields)
    return words


def _read_config(path: Path) -> str:
    """The file's text, read no further than the size cap (a config named /dev/zero must not eat memory)."""
    filename = str(path)
    try:
        with path.open("rb") as f:
            content = f.read(_yaml.MAX_BYTES + 1)
            size = max(len(content), os.fstat(f.fileno()).st_size)
    except OSError as exc:
        raise ConfigError(filename, [Problem((), f"cannot read the config file: {exc.strerror or exc}")]) from None
    _refuse_big(filename, size)
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        message = f"the config is not UTF-8 text (byte 0x{content[exc.start]:02x}); save it as UTF-8"
        raise ConfigError(filename, [Problem((), message, line)]) from None


def _refuse_big(filename: str, size: int) -> None:
    if size > _yaml.MAX_BYTES:
        message = (
            f"config is {_yaml.size_text(size)}, more than {_yaml.size_text(_yaml.MAX_BYTES)}; "
            "a config is a few KiB: is this the right file?"
        )
        raise ConfigError(filename, [Problem((), message)])


#: mappings whose keys are names, and what they name
_NAMED: dict[Loc, str] = {
    ("services",): "service",
    ("providers",): "provider",
    ("images",): "image",
    ("notifiers",): "notifier",
}


def _key_problems(doc: _yaml.Document, out: _Collector) -> None:
    """Keys written twice, and keys YAML did not read as strings (`123:`, `true:`): no key in a config is
    anything but a string, and in a name's place the message says so."""
    for dup in doc.problems:
        out.problems.append(Problem(dup.path, dup.message, dup.line))
    for key in doc.index.odd_keys:
        mapping = key.path
        what = _NAMED.get(mapping) or ("version" if mapping[:1] == ("images",) and mapping[2:] == ("versions",) else "")
        subject = f"{what} names" if what else "keys"
        out.problems.append(
            Problem(
                (*mapping, key.text),
                f"{subject} must be strings ({key.text} is read as {key.read_as}); quote it: '{key.text}'",
                key.line,
            )
        )


def _strings_only(data: Any) -> Any:
    """The document without the keys that are not strings (already reported), so nothing trips on them."""
    if isinstance(data, dict):
        return {k: _strings_only(v) for k, v in data.items() if isinstance(k, str)}
    if isinstance(data, list):
        return [_strings_only(v) for v in data]
    return data


def _nul_problems(data: Any, path: Loc, out: _Collector) -> bool:
    """A NUL character cannot be in a path, a command or a header; found here, it would be a crash later.
    True when there was one."""
    if isinstance(data, str) and "\x00" in data:
        out.add(path, "contains a NUL character (\\0); remove it")
        return True
    found = False
    if isinstance(data, dict):
        for k, v in data.items():
            if "\x00" in k:
                out.add((*path, k), "this key contains a NUL character (\\0); remove it")
                found = True
            found = _nul_problems(v, (*path, k), out) or found
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found = _nul_problems(v, (*path, i), out) or found
    return found


def load_config(path: str | Path, text: str | None = None) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem."""
    path = Path(path).resolve() if text is None else Path(path).absolute()
    filename = str(path)
    if text is None:
        text = _read_config(path)
    else:
        _refuse_big(filename, len(text.encode("utf-8", "replace")))
    try:
        doc = _yaml.parse(text)
    except _yaml.YamlSyntaxError as exc:
        raise ConfigError(filename, [Problem(p.path, p.message, p.line) for p in exc.problems]) from None
    data = {} if doc.data is None else doc.data
    out = _Collector(doc.index)
    if not isinstance(data, dict):
        out.add((), "the config must be a mapping with keys like daemon, providers, services")
        raise ConfigError(filename, out.problems)
    _key_problems(doc, out)
    if doc.index.odd_keys:
        data = _strings_only(data)
    if _nul_problems(data, (), out):
        raise ConfigError(filename, out.problems)  # the paths and commands below would not survive it
    warnings: list[str] = []
    base = path.parent
    set_config_dir(base)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            out.add((str(key),), f"unknown key {key!r}{did_you_mean(str(key), list(TOP_LEVEL_KEYS))}")

    # daemon
    daemon = DaemonConfig()
    raw_daemon = _mapping(data.get("daemon"), ("daemon",), out)
    try:
        daemon = DaemonConfig.model_validate(raw_daemon)
        out.numbers(("daemon",), daemon, raw_daemon)
    except ValidationError as exc:
        out.pydantic(("daemon",), exc, _vocabulary(DaemonConfig))
    daemon = daemon.model_copy(
        update={
            "state_dir": resolve_against(base, daemon.state_dir),
            "api_token_file": resolve_against(base, daemon.api_token_file) if daemon.api_token_file else None,
            "check_paths": [resolve_against(base, p) for p in daemon.check_paths],
            "playbook_paths": [resolve_against(base, p) for p in daemon.playbook_paths],
            "tls_cert_file": resolve_against(base, daemon.tls_cert_file) if daemon.tls_cert_file else None,
            "tls_key_file": resolve_against(base, daemon.tls_key_file) if daemon.tls_key_file else None,
        }
    )
    _daemon_files(daemon, out)
    if "listen" in raw_daemon and not any(p.path[:2] == ("daemon", "listen") for p in out.problems):
        _listen(daemon, out, warnings, filename)

    # plugins: built-ins, entry points and drop-ins from check_paths
    explicit_paths = isinstance(data.get("daemon"), dict) and "check_paths" in data["daemon"]
    for i, folder in enumerate(daemon.check_paths):
        if explicit_paths and not folder.is_dir():
            out.add(
                ("daemon", "check_paths", i),
                f"{folder} is not a folder"
                if folder.exists()
                else f"folder {folder} does not exist; create it (mkdir -p {folder}) or remove it from check_paths",
            )
    _CHECK_ENV.set(CheckEnv(tuple(daemon.check_paths), base))
    kinds = CHECK_KINDS.copy()
    for problem in kinds.load_dropins(daemon.check_paths):
        out.add(("daemon", "check_paths"), problem)

    providers: dict[str, ProviderConfig] = {}
    for name, raw in _named(data, "providers", out).items():
        prov = _provider(str(name), raw, out)
        if prov is not None:
            providers[str(name)] = prov

    images: dict[str, ImageConfig] = {}
    for name, raw in _named(data, "images", out).items():
        image = _image(str(name), raw, providers, out)
        if image is not None:
            images[str(name)] = image

    notifiers: dict[str, NotifierConfig] = {}
    for name, raw in _named(data, "notifiers", out).items():
        notifier = _notifier(str(name), raw, out)
        if notifier is not None:
            notifiers[str(name)] = notifier

    services: dict[str, ServiceConfig] = {}
    raw_services = _named(data, "services", out)
    if not raw_services and "services" in data:
        out.add(("services",), "no services defined; add at least one under services:")
    for name, raw in raw_services.items():
        svc = _service(str(name), raw, providers, images, kinds, out)
        if svc is not None:
            for i, n in enumerate(svc.notify):
                if n not in notifiers and "notifiers" not in {p.path[0] for p in out.problems if p.path}:
                    out.add(
                        ("services", str(name), "notify", i),
                        f"unknown notifier {n!r}{did_you_mean(n, list(notifiers))}; notifiers: "
                        f"{', '.join(notifiers) or 'none defined'}",
                    )
            services[str(name)] = svc

    if any(s.managed for s in services.values()):
        books, book_problems = load_playbooks(list(daemon.playbook_paths))
        for bp in book_problems:
            out.add(("daemon", "playbook_paths"), f"playbook {bp.render()}")
        for svc in services.values():
            if svc.managed and svc.remediation.playbook not in books and not book_problems:
                out.add(
                    ("services", svc.name, "remediation", "playbook"),
                    f"playbook {svc.remediation.playbook!r} not found in "
                    f"{', '.join(map(str, daemon.playbook_paths))}; playbooks: {', '.join(books) or 'none'}",
                )

    if out.problems:
        raise ConfigError(filename, out.problems)
    if not services:
        warnings.append("0 services: nothing will be checked; add a service under services: (docs/configuration.md)")
    return Config(
        path=path,
        daemon=daemon,
        providers=providers,
        services=services,
        images=images,
        notifiers=notifiers,
        check_kinds={k: kinds.get(k) for k in kinds.kinds()},  # type: ignore[misc]
        warnings=tuple(warnings),
    )


def _named(data: dict[str, Any], section: str, out: _Collector) -> dict[str, Any]:
    """A section of named things (services, providers, ...), each name checked as a file name."""
    items = _mapping(data.get(section), (section,), out)
    what = _NAMED[(section,)]
    for name in items:
        problem = name_problem(name, what)
        if problem:
            out.add((section, name), problem)
    return items


def _daemon_files(daemon: DaemonConfig, out: _Collector) -> None:
    """The token and TLS files exist, are readable, and hold what they should."""
    if daemon.api_token_file is not None:
        try:
            token = _read_small(daemon.api_token_file)
        except ValueError as exc:
            out.add(("daemon", "api_token_file"), str(exc))
        else:
            if not token.strip():
                out.add(("daemon", "api_token_file"), f"{daemon.api_token_file} is empty; put the bearer token in it")
    cert, key = daemon.tls_cert_file, daemon.tls_key_file
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


def _listen(daemon: DaemonConfig, out: _Collector, warnings: list[str], filename: str) -> None:
    """A listen host that does not resolve is a warning (the name may come later: DHCP, a VPN); one that is
    not loopback needs a token, or anyone who can reach it controls the fleet."""
    host, path = daemon.listen_host, ("daemon", "listen")
    ip = _ip(host)
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
    if not loopback and daemon.api_token_file is None:
        out.add(
            path,
            f"listening on {daemon.listen} without api_token_file lets anyone on the network control the fleet; "
            "set daemon.api_token_file, or listen on 127.0.0.1",
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


def _mapping(value: object, path: Loc, out: _Collector) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        out.add(path, f"expected a mapping (key: value), got {type(value).__name__}")
        return {}
    return value


def _kind_and_options(
    path: Loc, raw: object, registry: Any, what: str, example: str, out: _Collector
) -> tuple[str, Any] | None:
    """`{kind: ..., **options}` for any extension point: the kind from the registry, its options validated by
    the kind's own `Config` model. Every problem is reported with its path; None when there was one."""
    if not isinstance(raw, dict):
        out.add(path, f"expected a mapping like {example}")
        return None
    kind = raw.get("kind")
    kinds = registry.kinds()
    cls = registry.get(kind) if isinstance(kind, str) else None
    if not isinstance(kind, str):
        out.add(path, f"missing 'kind'; one of: {', '.join(kinds)}")
        return None
    if cls is None:
        out.add(
            (*path, "kind"),
            f"unknown {what} kind {kind!r}{did_you_mean(kind, kinds)}; known kinds: {', '.join(kinds)}",
        )
        return None
    try:
        options = cls.Config.model_validate({k: v for k, v in raw.items() if k != "kind"})
    except ValidationError as exc:
        out.pydantic(path, exc, _vocabulary(cls.Config) | {"kind"})
        return None
    if not out.numbers(path, options, raw):
        return None
    return kind, options


def _provider(name: str, raw: object, out: _Collector) -> ProviderConfig | None:
    found = _kind_and_options(("providers", name), raw, PROVIDER_KINDS, "provider", "{kind: static}", out)
    return None if found is None else ProviderConfig(name, *found)


def _notifier(name: str, raw: object, out: _Collector) -> NotifierConfig | None:
    path: Loc = ("notifiers", name)
    found = _kind_and_options(path, raw, NOTIFIER_KINDS, "notifier", "{kind: webhook, url: ...}", out)
    if found is None:
        return None
    kind, options = found
    for file_key, env_key, what in (
        ("secret_file", "secret_env", "secret"),
        ("webhook_url_file", "webhook_url_env", "webhook URL"),
    ):
        if hasattr(options, file_key):
            try:
                read_secret(getattr(options, file_key), getattr(options, env_key), what)
            except ValueError as exc:
                out.add((*path, file_key if getattr(options, file_key) else env_key), str(exc))
                return None
    return NotifierConfig(name, kind, options)


def _image(name: str, raw: object, providers: dict[str, ProviderConfig], out: _Collector) -> ImageConfig | None:
    path: Loc = ("images", name)
    if not isinstance(raw, dict):
        out.add(path, "expected a mapping with provider, versions, known_good")
        return None
    raw_versions = raw.get("versions")
    bad_names = False
    for version in raw_versions if isinstance(raw_versions, dict) else ():
        problem = name_problem(version, "version")
        if problem:
            out.add((*path, "versions", version), problem)
            bad_names = True
    try:
        model = ImageModel.model_validate(raw)
    except ValidationError as exc:
        out.pydantic(path, exc, _vocabulary(ImageModel))
        return None
    if bad_names:
        return None
    provider = providers.get(model.provider)
    if provider is None:
        out.add(
            (*path, "provider"), f"unknown provider {model.provider!r}{did_you_mean(model.provider, list(providers))}"
        )
        return None
    cls = PROVIDER_KINDS.get(provider.kind)
    image_model = getattr(cls, "ImageVersion", None)
    if image_model is None:
        out.add(
            (*path, "provider"), f"provider {model.provider!r} ({provider.kind}) cannot launch machines from images"
        )
        return None
    versions: dict[str, BaseModel] = {}
    for version, spec in model.versions.items():
        where = (*path, "versions", version)
        try:
            versions[version] = image_model.model_validate(spec)
        except ValidationError as exc:
            out.pydantic(where, exc, _vocabulary(image_model))
            continue
        if not out.numbers(where, versions[version], spec):
            del versions[version]
    if len(versions) != len(model.versions):
        return None
    return ImageConfig(name, model.provider, versions, model.known_good)


def _service(
    name: str,
    raw: object,
    providers: dict[str, ProviderConfig],
    images: dict[str, ImageConfig],
    kinds: Any,
    out: _Collector,
) -> ServiceConfig | None:
    path: Loc = ("services", name)
    if not isinstance(raw, dict):
        out.add(path, "expected a mapping with provider, checks, ...")
        return None
    try:
        model = ServiceModel.model_validate(raw)
    except ValidationError as exc:
        out.pydantic(path, exc, _vocabulary(ServiceModel, MachineSpec, RemediationConfig, DiscoveryModel))
        # still look at the checks so that every problem is listed at once
        for group in ("checks", "service_checks"):
            items = raw.get(group)
            if isinstance(items, list):
                _checks(items, (*path, group), kinds, out)
        return None
    ok = out.numbers(path, model, raw)
    provider = providers.get(model.provider)
    if provider is None:
        known = ", ".join(providers) or "none defined"
        out.add(
            (*path, "provider"),
            f"unknown provider {model.provider!r}{did_you_mean(model.provider, list(providers))}; providers: {known}",
        )
        ok = False
    elif provider.kind == "static" and not model.machines:
        out.add(
            path,
            f"provider {model.provider!r} is static: list the machines under machines: [{{id, address}}]",
        )
        ok = False
    elif model.image is None and provider.kind != "static":
        out.add(path, f"provider {model.provider!r} ({provider.kind}) launches machines: name an image under image:")
        ok = False
    if model.image is not None:
        image = images.get(model.image)
        if image is None:
            out.add(
                (*path, "image"),
                f"unknown image {model.image!r}{did_you_mean(model.image, list(images))}; "
                f"images: {', '.join(images) or 'none defined'}",
            )
            ok = False
        elif image.provider != model.provider:
            out.add(
                (*path, "image"),
                f"image {model.image!r} belongs to provider {image.provider!r}, "
                f"not this service's provider {model.provider!r}",
            )
            ok = False
        if model.desired is None:
            out.add(path, "a service with an image needs desired: (how many machines to keep)")
            ok = False
    rotation_kind = model.rotation.kind
    rotation_opts: BaseModel | None = None
    rot_cls = ROTATION_KINDS.get(rotation_kind)
    if rot_cls is None:
        out.add(
            (*path, "rotation", "kind"),
            f"unknown rotation kind {rotation_kind!r}{did_you_mean(rotation_kind, ROTATION_KINDS.kinds())}; "
            f"known kinds: {', '.join(ROTATION_KINDS.kinds())}",
        )
        ok = False
    else:
        try:
            rotation_opts = rot_cls.Config.model_validate(dict(model.rotation.model_extra or {}))
        except ValidationError as exc:
            out.pydantic((*path, "rotation"), exc, _vocabulary(rot_cls.Config) | {"kind"})
            ok = False
        else:
            ok = out.numbers((*path, "rotation"), rotation_opts, raw.get("rotation")) and ok
    seen: set[str] = set()
    for i, m in enumerate(model.machines):
        if m.id in seen:
            out.add((*path, "machines", i, "id"), f"machine id {m.id!r} appears twice; ids must be unique")
            ok = False
        seen.add(m.id)
    checks = _checks(model.checks, (*path, "checks"), kinds, out)
    service_checks = _checks(model.service_checks, (*path, "service_checks"), kinds, out, per_machine=False)
    if checks is None or service_checks is None:
        ok = False
    desired = model.desired if model.desired is not None else len(model.machines)
    count, is_pct = parse_count_or_percent(model.min_healthy)
    min_healthy = math.ceil(desired * count / 100) if is_pct else count
    if min_healthy > desired:
        out.add((*path, "min_healthy"), f"min_healthy ({min_healthy}) is more than desired ({desired})")
        ok = False
    if not ok or checks is None or service_checks is None:
        return None
    mu_count, mu_pct = parse_count_or_percent(model.remediation.max_unhealthy)
    max_unhealthy = math.floor(desired * mu_count / 100) if mu_pct else mu_count
    return ServiceConfig(
        name=name,
        provider=model.provider,
        desired=desired,
        min_healthy=min_healthy,
        machines=tuple(model.machines),
        checks=checks,
        service_checks=service_checks,
        image=model.image,
        rotation_kind=rotation_kind,
        rotation=rotation_opts,
        remediation=model.remediation,
        max_unhealthy=max_unhealthy,
        notify=tuple(model.notify),
        discovery=model.discovery.model_dump(exclude_none=True) if model.discovery else None,
    )


def _checks(
    items: list[Any], path: Loc, kinds: Any, out: _Collector, per_machine: bool = True
) -> tuple[CheckSpec, ...] | None:
    specs: list[CheckSpec] = []
    names: set[str] = set()
    failed = False
    for i, raw in enumerate(items):
        spec = _check(raw, (*path, i), kinds, out, per_machine)
        if spec is None:
            failed = True
            continue
        if spec.name in names:
            out.add(
                (*path, i, "name"),
                f"check name {spec.name!r} appears twice; names must be unique per service",
            )
            failed = True
        names.add(spec.name)
        specs.append(spec)
    return None if failed else tuple(specs)


def _check(raw: object, path: Loc, kinds: Any, out: _Collector, per_machine: bool) -> CheckSpec | None:
    if not isinstance(raw, dict):
        out.add(path, "expected a mapping with name, kind, interval, ...")
        return None
    before = len(out.problems)
    common_fields = set(CheckCommon.model_fields)
    kind = raw.get("kind")
    cls = kinds.get(kind) if isinstance(kind, str) else None
    if isinstance(kind, str) and cls is None:
        out.add(
            (*path, "kind"),
            f"unknown check kind {kind!r}{did_you_mean(kind, kinds.kinds())}; "
            f"known kinds: {', '.join(kinds.kinds())} (drop-ins go in daemon.check_paths)",
        )
    common: CheckCommon | None = None
    try:
        common = CheckCommon.model_validate(raw)
        out.numbers(path, common, raw)
    except ValidationError as exc:
        out.pydantic(path, exc, common_fields)
    kind_raw = {k: v for k, v in raw.items() if k not in common_fields}
    allowed = TEMPLATE_FIELDS if per_machine else SERVICE_TEMPLATE_FIELDS
    for rel, message in find_template_problems(kind_raw, allowed):
        out.add((*path, *rel), message)
    options: CheckOptions | None = None
    if cls is not None:
        try:
            options = cls.validate_options(kind_raw)
            out.numbers(path, options, kind_raw)
        except ValidationError as exc:
            out.pydantic(path, exc, _vocabulary(cls.Config) | common_fields)
    if options is not None and cls is not None and len(out.problems) == before:
        for rel, message in cls.preflight(options, _CHECK_ENV.get(CheckEnv())):
            out.add((*path, *rel), message)
    if len(out.problems) > before or common is None or options is None or cls is None:
        return None
    timeout = common.timeout if common.timeout is not None else min(common.interval, 10.0)
    fingerprint = hashlib.sha1(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()
    return CheckSpec(
        name=common.name,
        kind=common.kind,
        interval=common.interval,
        timeout=timeout,
        retry_interval=common.retry_interval,
        fall=common.fall,
        rise=common.rise,
        flap_low=common.flap_low,
        flap_high=common.flap_high,
        options=options,
        check_class=cls,
        timeout_status=(cls.timeout_status if common.timeout_status is None else Status[common.timeout_status.upper()]),
        unknown_alert_after=common.unknown_alert_after,
        fingerprint=fingerprint,
    )
