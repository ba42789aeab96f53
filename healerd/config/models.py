"""The config's shapes: pydantic models at the YAML boundary, and the frozen values the daemon is built from.

Durations are stored as float seconds; paths are resolved against the config file's folder by the loader.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..checks.base import Check, CheckOptions
from ..durations import DAY, YEAR, parse_count_or_percent, parse_duration, require_above_zero
from ..machines import address_problem
from ..modes import Mode
from ..results import Status
from .access import TrustedProxy
from .dsn import dsn_problem
from .ladder import MaxRepairs, Rung, rungs
from .names import name_problem
from .network import advertise_address, host_header, listen_address
from .zones import ZoneLoss


def _duration(v: object, info: ValidationInfo, at_most: float = YEAR) -> float:
    return parse_duration(v, at_most=at_most, what=info.field_name or "duration")


def _above_zero(v: float | None, info: ValidationInfo, example: str) -> float | None:
    """A duration that means nothing at 0 (a timeout, a bake): refused there, with an example of a good one."""
    return None if v is None else require_above_zero(v, what=info.field_name or "duration", example=example)


#: Prometheus's label names, which Alertmanager's alerts carry
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class AlertInputsConfig(Strict):
    """`POST /api/v1/alerts` (Alertmanager's webhook): which labels name the service and the machine (its id, or
    its address as Prometheus's `instance` has it), and the rise/fall of the virtual checks `alert:<alertname>`."""

    service_label: str = "service"
    machine_label: str = "machine"
    fall: int = Field(default=1, ge=1, le=100)
    rise: int = Field(default=1, ge=1, le=100)

    @field_validator("service_label", "machine_label")
    @classmethod
    def _label(cls, v: str, info: ValidationInfo) -> str:
        if not _LABEL.fullmatch(v):
            fixed = re.sub(r"^[^a-zA-Z_]+", "", re.sub(r"[^a-zA-Z0-9_]+", "_", v))
            raise ValueError(
                f"{info.field_name} {v!r} is no Prometheus label name (letters, digits and '_', not starting with "
                f"a digit); name the label your alerts carry{f', e.g. {fixed!r}' if fixed else ''}"
            )
        return v

    @model_validator(mode="after")
    def _two_labels(self) -> AlertInputsConfig:
        if self.service_label == self.machine_label:
            raise ValueError(
                f"service_label and machine_label are both {self.machine_label!r}: one label cannot name both the "
                "service and the machine; set them to two labels (like service and instance)"
            )
        return self

    #: virtual checks one machine may have at once, and the whole fleet (a new alert name past them is refused)
    max_per_machine: int = Field(default=50, ge=1, le=10_000)
    max_total: int = Field(default=5000, ge=1, le=1_000_000)


class DaemonConfig(Strict):
    listen: str = "127.0.0.1:9464"
    state_dir: Path = Path("./.healerd")
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    api_token_file: Path | None = None
    access_file: Path | None = None  # named, scoped credentials (`healerd access`), besides api_token_file's token
    public_reads: bool = True  # false: reads need a `read` credential (but /healthz, /readyz, a public page)
    status_page: Literal["public", "protected"] = "public"  # public: the page stays open when reads are not
    trusted_proxy: TrustedProxy | None = None  # single sign-on: the user a reverse proxy names
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
    allowed_hosts: list[Annotated[str, AfterValidator(host_header)]] = Field(default_factory=list, max_length=100)
    #: Serve the API over HTTPS with this certificate (PEM, with its chain) and unencrypted key; both or neither.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return listen_address(v)

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class ClusterConfig(Strict):
    """`cluster:` (docs/cluster.md): nodes share one PostgreSQL database; absent, healerd runs alone on SQLite."""

    #: the PostgreSQL connection string (postgresql://user@host/db); or store_file: a file holding it
    store: str | None = None
    store_file: Path | None = None
    #: this node's unique name (default: the host name)
    node: str = Field(default_factory=socket.gethostname)
    #: host:port where the other nodes reach this node's API (default: daemon.listen)
    advertise: str | None = None
    #: the leader lease: renewed every lease_ttl / 3; another node leads within lease_ttl of the leader's death
    lease_ttl: float = 10.0
    #: distinct vantage points (nodes) that must see a machine down before it is remediated
    confirm_from: int = Field(default=2, ge=1, le=16)
    zone: str = ""  # this node's zone: its word on that zone's loss does not count (it may be cut off with it)
    token_file: Path | None = None  # a `cluster` credential: what this node sends the others (their probes)
    #: the store is reached through PgBouncer in transaction pooling: no server-side prepared statements
    pgbouncer: bool = False

    @field_validator("lease_ttl", mode="before")
    @classmethod
    def _ttl(cls, v: object, info: ValidationInfo) -> float:
        seconds = _duration(v, info, at_most=300.0)
        if seconds < 3.0:
            raise ValueError(f"lease_ttl {v} is too short: the lease is renewed every lease_ttl / 3; use 3s or more")
        return seconds

    @field_validator("advertise")
    @classmethod
    def _advertise(cls, v: str | None) -> str | None:
        return None if v is None else advertise_address(v)

    @field_validator("node")
    @classmethod
    def _node(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", v):
            fixed = re.sub(r"^[^A-Za-z0-9]+", "", re.sub(r"[^A-Za-z0-9._-]+", "-", v))[:63]
            raise ValueError(
                f"node name {v[:100]!r} cannot be used: write 1 to 63 letters, digits, '.', '_' or '-', starting with "
                f"a letter or digit{f', e.g. {fixed!r}' if fixed and fixed != v else ''}"
            )
        return v

    @field_validator("store", mode="before")
    @classmethod
    def _store(cls, v: object) -> object:
        """Read by libpq's parser, as the store will; no message quotes the password (pydantic's would)."""
        if v is None:
            return v
        if not isinstance(v, str):
            raise ValueError(
                f"expected the connection string as text, got {type(v).__name__}; write it like "
                "postgresql://healerd@db.example:5432/healerd"
            )
        problem = dsn_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _one_store(self) -> ClusterConfig:
        if (self.store is None) == (self.store_file is None):
            raise ValueError("set one of store (the PostgreSQL connection string) or store_file (a file holding it)")
        return self


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

    @field_validator("interval", "retry_interval")
    @classmethod
    def _often(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is not None and v < 0.05:
            raise ValueError(f"{info.field_name} must be at least 50ms (got {v:g}s); checks cannot run more often")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float | None, info: ValidationInfo) -> float | None:
        return _above_zero(v, info, "1s (at most the interval)")

    @field_validator("unknown_alert_after")
    @classmethod
    def _unknown_after(cls, v: float, info: ValidationInfo) -> float | None:
        return _above_zero(v, info, "5m")

    @model_validator(mode="after")
    def _relations(self) -> CheckCommon:
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
    zone: str = ""  # the zone (datacenter, availability zone) it stands in

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        problem = name_problem(v, "machine")
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str, info: ValidationInfo) -> str:
        # it lands in check URLs and HAProxy's commands: a space, ';' or a newline must never reach them
        if (problem := address_problem(v)) is not None:
            who = f"machine {info.data['id']!r}" if isinstance(info.data.get("id"), str) else "the machine"
            raise ValueError(f"{who} has the address {v!r}: {problem}")
        return v


class RemediationConfig(Strict):
    """Per-service remediation policy and its safety gates (docs/remediation.md)."""

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
    ladder: list[Rung] | None = Field(default=None, min_length=1)  # repair before replace: rungs in order
    max_repairs: MaxRepairs | None = None  # a machine repaired this often goes straight to the last rung
    zone_loss: ZoneLoss = ZoneLoss()  # when a zone counts as lost, and what is launched elsewhere

    @field_validator("storm_cooldown", "backoff", "keep_warning", mode="before")
    @classmethod
    def _durations(cls, v: object, info: ValidationInfo) -> float:
        return _duration(v, info)

    @field_validator("probation_timeout", "boot_timeout", mode="before")
    @classmethod
    def _per_day(cls, v: object, info: ValidationInfo) -> float:
        return _duration(v, info, at_most=DAY)

    @field_validator("probation_timeout")
    @classmethod
    def _probation(cls, v: float, info: ValidationInfo) -> float | None:
        return _above_zero(v, info, "10m (the time a new machine has to pass its checks)")

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


def _rate(v: object) -> float:
    """`1%`, `0.5%` or a fraction below 1 like 0.01 -> 0.01. A bare 1 is refused: 1% or 100%?"""
    rate: object = v
    if isinstance(v, str) and v.strip().endswith("%"):
        try:
            rate = float(v.strip()[:-1]) / 100
        except ValueError:
            rate = None
    elif isinstance(v, int | float) and not isinstance(v, bool) and v >= 1:
        raise ValueError(f"a bare number must be a fraction below 1 (0.01 is 1%); write {v:g}% or 100% as a percentage")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise ValueError(f"expected a rate like 1% or 0.01 (between 0 and 100%), got {v!r}")
    return float(rate)


class JudgeConfig(Strict):
    """How a canary is judged against the known-good machines of the same window (docs/rollouts.md)."""

    #: the canary's share of non-OK results may exceed the baseline's by at most this much
    max_error_rate: float = 0.01
    #: the canary's p50 and p95 check durations may be at most this many times the baseline's
    max_latency_ratio: float = Field(default=1.5, ge=1.0, le=1000.0)
    #: results needed on each side before a verdict: fewer and the bake goes on (never promoted on no data)
    min_results: int = Field(default=50, ge=1, le=1_000_000)
    #: durations below this count as this (a 1 ms check against a 2 ms one is not twice as slow)
    latency_floor: float = 0.005

    @field_validator("max_error_rate", mode="before")
    @classmethod
    def _error_rate(cls, v: object) -> float:
        return _rate(v)

    @field_validator("latency_floor", mode="before")
    @classmethod
    def _floor(cls, v: object, info: ValidationInfo) -> float:
        seconds = _duration(v, info, at_most=60.0)
        if seconds <= 0:
            raise ValueError("latency_floor must be above 0 (a ratio of durations needs a floor), e.g. 1ms")
        return seconds


class RolloutConfig(Strict):
    """How a new version of an image is tried and rolled over the fleet (docs/rollouts.md)."""

    #: machines launched from the candidate, in addition to the fleet, and judged during the bake
    canary: int = Field(default=1, ge=0, le=1000)
    bake: float = 300.0
    #: the bake goes on while either side has fewer than judge.min_results, up to this long (default 3 x bake)
    max_bake: float | None = None
    #: machines launched above desired at once during the refresh
    max_surge: int = Field(default=1, ge=0, le=1000)
    #: machines of the old version taken out of rotation before their replacement serves
    max_unavailable: int = Field(default=0, ge=0, le=1000)
    #: how long a new machine may take to pass its checks before the rollout rolls back
    probation_timeout: float = 600.0
    #: how long a machine out of rotation keeps running before it is retired (requests already sent finish)
    drain: float = 5.0
    judge: JudgeConfig = JudgeConfig()

    @field_validator("bake", "max_bake", "probation_timeout", "drain", mode="before")
    @classmethod
    def _durations(cls, v: object, info: ValidationInfo) -> float | None:
        return None if v is None else _duration(v, info, at_most=DAY)

    @field_validator("bake")
    @classmethod
    def _bake(cls, v: float, info: ValidationInfo) -> float | None:
        return _above_zero(v, info, "5m (a canary is judged on what it did during the bake)")

    @field_validator("probation_timeout")
    @classmethod
    def _probation(cls, v: float, info: ValidationInfo) -> float | None:
        return _above_zero(v, info, "10m (the time a new machine has to pass its checks)")

    @model_validator(mode="after")
    def _room(self) -> RolloutConfig:
        if self.max_surge + self.max_unavailable < 1:
            raise ValueError("max_surge and max_unavailable cannot both be 0: a refresh could never replace a machine")
        if self.max_bake is not None and self.max_bake < self.bake:
            raise ValueError(f"max_bake ({self.max_bake:g}s) must be at least bake ({self.bake:g}s)")
        return self

    @property
    def bake_limit(self) -> float:
        return self.max_bake if self.max_bake is not None else 3 * self.bake


class ImageModel(Strict):
    provider: str
    versions: dict[str, dict[str, Any]]
    known_good: str
    rollout: RolloutConfig = RolloutConfig()

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
    rollout: RolloutConfig = field(default_factory=RolloutConfig)


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
    #: services this one needs: while one of them is down, this one's machines are not replaced
    depends_on: list[str] = Field(default_factory=list, max_length=100)

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
    depends_on: tuple[str, ...] = ()

    @property
    def managed(self) -> bool:
        """True when healerd launches this service's machines (it has an image)."""
        return self.image is not None

    @property
    def rungs(self) -> tuple[Rung, ...]:
        """The playbooks tried in order on a sick machine (none: out of rotation, and a human acts)."""
        r = self.remediation
        return rungs(r.ladder, r.playbook, named="playbook" in r.model_fields_set, managed=self.managed)


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
    #: None: one node on SQLite (the embedded default)
    cluster: ClusterConfig | None = None
    alert_inputs: AlertInputsConfig = field(default_factory=AlertInputsConfig)
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
        if self.cluster is not None:
            c = self.cluster
            lines.append(
                f"  cluster node {c.node} (advertised at {c.advertise or self.daemon.listen}), "
                f"lease_ttl {c.lease_ttl:g}s, confirm_from {c.confirm_from}, store on PostgreSQL"
            )
        for image in self.images.values():
            r = image.rollout
            lines.append(
                f"  image {image.name}: versions {', '.join(image.versions)}, known good {image.known_good} (the store "
                f"may hold a promoted one); rollouts: canary {r.canary}, bake {r.bake:g}s, max_surge {r.max_surge}, "
                f"max_unavailable {r.max_unavailable}, judge at most {r.judge.max_error_rate:.2%} more errors and "
                f"{r.judge.max_latency_ratio:g}x the latency"
            )
        for svc in self.services.values():
            checks = ", ".join(f"{c.name} ({c.kind} every {c.interval:g}s)" for c in svc.checks) or "none"
            names = [r.playbook for r in svc.rungs]
            rungs = (f"ladder {' then '.join(names)}" if len(names) > 1 else f"playbook {names[0]}") if names else ""
            healing = (
                f"heals from image {svc.image} (known good {self.images[svc.image].known_good}) with {rungs}"
                if svc.image
                else f"repaired with {rungs}"
                if rungs
                else "out of rotation when down; a human repairs it"
            )
            lines.append(
                f"  service {svc.name}: provider {svc.provider}, desired {svc.desired}, "
                f"min_healthy {svc.min_healthy}, checks: {checks}; {healing}"
                + (f"; notifies {', '.join(svc.notify)}" if svc.notify else "")
            )
        return "\n".join(lines)
