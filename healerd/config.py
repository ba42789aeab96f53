"""Configuration: YAML -> validated, typed models. Every problem is reported at once, with path and line."""

from __future__ import annotations

import contextvars
import enum
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import _yaml
from .checks import CHECK_KINDS, Check, CheckEnv, CheckOptions
from .durations import parse_count_or_percent, parse_duration
from .providers import PROVIDER_KINDS
from .results import Status
from .rotation import ROTATION_KINDS
from .targets import SERVICE_TEMPLATE_FIELDS, TEMPLATE_FIELDS, did_you_mean, find_template_problems

Loc = tuple[str | int, ...]
#: the folder of the config file being loaded, for plugin options holding relative paths
_BASE: contextvars.ContextVar[Path] = contextvars.ContextVar("healerd_config_base")
#: what checks see at validation (check_paths, the config's folder), for their preflight
_CHECK_ENV: contextvars.ContextVar[CheckEnv] = contextvars.ContextVar("healerd_config_check_env")


def resolve_path(p: Path) -> Path:
    """A path from the config, resolved against the config file's folder."""
    return p if p.is_absolute() else (_BASE.get(Path.cwd()) / p).resolve()


class Mode(enum.StrEnum):
    OBSERVE = "observe"
    DRY_RUN = "dry-run"
    AUTO = "auto"


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


def format_path(path: Loc) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# ---------------------------------------------------------------------------------------------------------
# Models. Durations are stored as float seconds; paths are resolved against the config file's folder.


def _duration(v: object) -> float:
    return parse_duration(v)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    max_concurrent_checks: int = Field(default=5000, ge=1)
    #: Recent results kept per machine and check (in memory and in the store); flap detection needs 21.
    history: int = Field(default=30, ge=21, le=1000)
    #: Events kept in the store's event log.
    event_log_size: int = Field(default=100_000, ge=100)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
            raise ValueError(f"expected host:port like 127.0.0.1:9464, got {v!r}")
        return v

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class CheckCommon(BaseModel):
    """Fields every check has whatever its kind; the kind's own fields are validated by the kind."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
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

    @field_validator("interval", "timeout", "retry_interval", "unknown_alert_after", mode="before")
    @classmethod
    def _durations(cls, v: object) -> float | None:
        return None if v is None else _duration(v)

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
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    address: str

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected host:port like 10.0.0.5:8080, got {v!r}")
        return v


class RemediationConfig(Strict):
    """Per-service remediation policy and its safety gates (DESIGN §4)."""

    playbook: str = "replace-machine"
    mode: Mode | None = None  # overrides daemon.mode for this service
    max_concurrent: int = Field(default=1, ge=1)
    max_unhealthy: int | str = "50%"
    max_per_hour: int = Field(default=6, ge=0)
    storm_cooldown: float = 300.0
    backoff: float = 60.0  # first wait after a failed remediation of a machine; doubles each time
    max_retries: int = Field(default=3, ge=0)  # failed attempts on one machine before a human is paged
    probation_timeout: float = 600.0  # for machines launched to fill the fleet (playbooks set their own)
    boot_timeout: float = 300.0  # a new machine's failures count only after it passed once or this elapsed
    keep_for: float | None = None  # quarantined machines are terminated after this (default: kept)
    keep_warning: float = 3600.0  # warn this long before keep_for ends a quarantine

    @field_validator("storm_cooldown", "backoff", "probation_timeout", "keep_warning", "boot_timeout", mode="before")
    @classmethod
    def _durations(cls, v: object) -> float:
        return _duration(v)

    @field_validator("keep_for", mode="before")
    @classmethod
    def _keep(cls, v: object) -> float | None:
        return None if v is None else _duration(v)

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


class ServiceModel(Strict):
    provider: str
    image: str | None = None
    desired: int | None = Field(default=None, ge=0)
    min_healthy: int | str = 1
    machines: list[MachineSpec] = Field(default_factory=list)
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
            self.add(loc, msg)


def _vocabulary(*models: type[BaseModel]) -> set[str]:
    words: set[str] = set()
    for model in models:
        words.update(model.model_fields)
    return words


def _resolve(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p).resolve()


def load_config(path: str | Path, text: str | None = None) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem."""
    path = Path(path).resolve() if text is None else Path(path).absolute()
    filename = str(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(filename, [Problem((), f"cannot read the config file: {exc.strerror or exc}")]) from None
    try:
        data, index = _yaml.load(text)
    except _yaml.YamlSyntaxError as exc:
        raise ConfigError(filename, [Problem((), f"invalid YAML: {exc}", exc.line)]) from None
    if data is None:
        data = {}
    out = _Collector(index)
    if not isinstance(data, dict):
        out.add((), "the config must be a mapping with keys like daemon, providers, services")
        raise ConfigError(filename, out.problems)
    base = path.parent
    _BASE.set(base)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            out.add((str(key),), f"unknown key {key!r}{did_you_mean(str(key), list(TOP_LEVEL_KEYS))}")

    # daemon
    daemon = DaemonConfig()
    try:
        daemon = DaemonConfig.model_validate(_mapping(data.get("daemon"), ("daemon",), out))
    except ValidationError as exc:
        out.pydantic(("daemon",), exc, _vocabulary(DaemonConfig))
    daemon = daemon.model_copy(
        update={
            "state_dir": _resolve(base, daemon.state_dir),
            "api_token_file": _resolve(base, daemon.api_token_file) if daemon.api_token_file else None,
            "check_paths": [_resolve(base, p) for p in daemon.check_paths],
            "playbook_paths": [_resolve(base, p) for p in daemon.playbook_paths],
        }
    )

    if daemon.api_token_file is not None:
        try:
            if not daemon.api_token_file.read_text().strip():
                out.add(
                    ("daemon", "api_token_file"),
                    f"{daemon.api_token_file} is empty; put the bearer token in it",
                )
        except OSError as exc:
            out.add(("daemon", "api_token_file"), f"cannot read {daemon.api_token_file}: {exc.strerror or exc}")

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
    for name, raw in _mapping(data.get("providers"), ("providers",), out).items():
        prov = _provider(str(name), raw, out)
        if prov is not None:
            providers[str(name)] = prov

    images: dict[str, ImageConfig] = {}
    for name, raw in _mapping(data.get("images"), ("images",), out).items():
        image = _image(str(name), raw, providers, out)
        if image is not None:
            images[str(name)] = image

    notifiers: dict[str, NotifierConfig] = {}
    for name, raw in _mapping(data.get("notifiers"), ("notifiers",), out).items():
        notifier = _notifier(str(name), raw, out)
        if notifier is not None:
            notifiers[str(name)] = notifier

    services: dict[str, ServiceConfig] = {}
    raw_services = _mapping(data.get("services"), ("services",), out)
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
        from .playbooks import load_playbooks

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
    warnings: list[str] = []
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
    return kind, options


def _provider(name: str, raw: object, out: _Collector) -> ProviderConfig | None:
    found = _kind_and_options(("providers", name), raw, PROVIDER_KINDS, "provider", "{kind: static}", out)
    return None if found is None else ProviderConfig(name, *found)


def _notifier(name: str, raw: object, out: _Collector) -> NotifierConfig | None:
    from .notifiers import NOTIFIER_KINDS
    from .notifiers.base import read_secret

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
    try:
        model = ImageModel.model_validate(raw)
    except ValidationError as exc:
        out.pydantic(path, exc, _vocabulary(ImageModel))
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
        try:
            versions[version] = image_model.model_validate(spec)
        except ValidationError as exc:
            out.pydantic((*path, "versions", version), exc, _vocabulary(image_model))
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
    ok = True
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
