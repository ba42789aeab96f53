"""Loading a config: YAML -> validated, typed values. Every problem is reported at once, with path and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .. import _yaml
from ..checks.base import CheckEnv
from ..notifiers.base import read_secret
from ..openfiles import budget_problem, keepalive_shortfall
from ..paths import resolve_against, set_config_dir
from ..plugins import ACTIONS, CHECK_KINDS, PROVIDER_KINDS
from ..remediation.playbooks import load_playbooks
from ..words import did_you_mean
from .document import NAMED, key_problems, nul_problems, read_text, refuse_big, strings_only
from .dsn import dsn_problem
from .kinds import CHECKS, NOTIFIERS, PROVIDERS, ExtensionPoint, kind_and_options
from .models import (
    AlertInputsConfig,
    ClusterConfig,
    Config,
    DaemonConfig,
    ImageConfig,
    ImageModel,
    JudgeConfig,
    NotifierConfig,
    ProviderConfig,
    RolloutConfig,
    ServiceConfig,
)
from .names import name_problem
from .network import check_exposure, check_files, file_problem, folder_problem
from .problems import Collector, ConfigError, Loc, Problem, vocabulary
from .services import load_service

TOP_LEVEL_KEYS = ("daemon", "cluster", "providers", "images", "notifiers", "services", "alert_inputs")


def load_config(path: str | Path, text: str | None = None) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem."""
    path = Path(path).resolve() if text is None else Path(path).absolute()
    filename = str(path)
    if text is None:
        text = read_text(path)
    else:
        refuse_big(filename, len(text.encode("utf-8", "replace")))
    try:
        doc = _yaml.parse(text)
    except _yaml.YamlSyntaxError as exc:
        raise ConfigError(filename, [Problem(p.path, p.message, p.line) for p in exc.problems]) from None
    data = {} if doc.data is None else doc.data
    out = Collector(doc.index)
    if not isinstance(data, dict):
        out.add((), "the config must be a mapping with keys like daemon, providers, services")
        raise ConfigError(filename, out.problems)
    key_problems(doc, out)
    if doc.index.odd_keys:
        data = strings_only(data)
    if nul_problems(data, (), out):
        raise ConfigError(filename, out.problems)  # the paths and commands below would not survive it
    warnings: list[str] = []
    base = path.parent
    set_config_dir(base)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            out.add((str(key),), f"unknown key {key!r}{did_you_mean(str(key), list(TOP_LEVEL_KEYS))}")

    daemon = _daemon(data, base, out, warnings, filename)
    cluster = _cluster(data, daemon, base, out)
    alert_inputs = _section(data, "alert_inputs", AlertInputsConfig, out) if data.get("alert_inputs") else None
    checks = _check_kinds(data, daemon, base, out)

    providers: dict[str, ProviderConfig] = {}
    for name, raw in _named(data, "providers", out).items():
        found = kind_and_options(("providers", name), raw, PROVIDERS, out)
        if found is not None:
            providers[name] = ProviderConfig(name, found[0], found[2])

    images: dict[str, ImageConfig] = {}
    broken_images: set[str] = set()
    for name, raw in _named(data, "images", out).items():
        image = _image(name, raw, providers, out)
        if image is not None:
            images[name] = image
        else:
            broken_images.add(name)

    notifiers: dict[str, NotifierConfig] = {}
    for name, raw in _named(data, "notifiers", out).items():
        notifier = _notifier(name, raw, out)
        if notifier is not None:
            notifiers[name] = notifier

    services: dict[str, ServiceConfig] = {}
    raw_services = _named(data, "services", out)  # none at all is `validate`'s to refuse (--allow-empty takes it)
    env = CheckEnv(tuple(daemon.check_paths), base)
    for name, raw in raw_services.items():
        svc = load_service(name, raw, providers, images, checks, env, out, frozenset(broken_images))
        if svc is not None:
            _notify_targets(svc, notifiers, out)
            services[name] = svc

    _dependencies(services, raw_services, out)
    _playbooks(daemon, services, providers, out)
    for svc in services.values():
        socket = getattr(svc.rotation, "socket", None) if svc.rotation_kind == "haproxy" else None
        if isinstance(socket, str) and socket.startswith("/") and not Path(socket).exists():
            warnings.append(
                f"services.{svc.name}.rotation.socket {socket} does not exist (yet): HAProxy must run with "
                f"`stats socket {socket} level admin`; `healerd check` tests that it answers and allows changes"
            )
    sockets = sum(
        sum(c.check_class.uses_socket for c in s.checks) * (s.desired if s.managed else len(s.machines))
        + sum(c.check_class.uses_socket for c in s.service_checks)
        for s in services.values()
    )
    problem = budget_problem(sockets, daemon.max_concurrent_checks)
    if problem:
        out.add(("services",), problem)
    shortfall = keepalive_shortfall(sockets, daemon.max_concurrent_checks)
    if shortfall and not problem:
        warnings.append(shortfall)
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
        cluster=cluster,
        alert_inputs=alert_inputs or AlertInputsConfig(),
        check_kinds={k: cls for k in checks.registry.kinds() if (cls := checks.registry.get(k)) is not None},
        warnings=tuple(warnings),
    )


S = TypeVar("S", bound=BaseModel)


def _section(data: dict[str, Any], key: str, model: type[S], out: Collector) -> S | None:
    """A top-level mapping validated by its model; None (and the problems in `out`) when it is wrong."""
    raw = _mapping(data.get(key), (key,), out)
    try:
        section = model.model_validate(raw)
    except ValidationError as exc:
        out.pydantic((key,), exc, vocabulary(model))
        return None
    out.numbers((key,), section, raw)
    return section


def _cluster(data: dict[str, Any], daemon: DaemonConfig, base: Path, out: Collector) -> ClusterConfig | None:
    if data.get("cluster") is None:
        return None
    cluster = _section(data, "cluster", ClusterConfig, out)
    if cluster is None:
        return None
    cluster = cluster.model_copy(
        update={
            "store_file": resolve_against(base, cluster.store_file) if cluster.store_file else None,
            "token_file": resolve_against(base, cluster.token_file) if cluster.token_file else None,
        }
    )
    if cluster.store_file is not None:
        problem = file_problem(cluster.store_file, "the connection string")
        if problem is None:
            # read as the store will read it, and judged as cluster.store is
            try:
                wrong = dsn_problem(read_secret(cluster.store_file, None, "cluster.store_file") or "")
            except ValueError as exc:
                wrong = str(exc)
            problem = wrong and f"in {cluster.store_file}: {wrong}"
        if problem:
            out.add(("cluster", "store_file"), problem)
    if daemon.api_token_file is None and cluster.token_file is None:
        out.add(
            ("cluster",),
            "the nodes of a cluster call each other's API with a bearer token: set cluster.token_file to a "
            "file holding a `cluster` credential (healerd access add NODE --scope cluster), or "
            "daemon.api_token_file to one token, the same on every node",
        )
    elif cluster.token_file is not None and (problem := file_problem(cluster.token_file, "the cluster credential")):
        out.add(("cluster", "token_file"), problem)
    if cluster.advertise is None and daemon.listen_host in ("0.0.0.0", "::", ""):
        out.add(
            ("cluster", "advertise"),
            f"daemon.listen {daemon.listen} is no address the other nodes can reach; set cluster.advertise "
            "to this node's host:port (like 10.0.0.7:9464)",
        )
    return cluster


def _daemon(data: dict[str, Any], base: Path, out: Collector, warnings: list[str], filename: str) -> DaemonConfig:
    raw = _mapping(data.get("daemon"), ("daemon",), out)
    daemon = _section(data, "daemon", DaemonConfig, out) or DaemonConfig()
    daemon = daemon.model_copy(
        update={
            "state_dir": resolve_against(base, daemon.state_dir),
            "api_token_file": resolve_against(base, daemon.api_token_file) if daemon.api_token_file else None,
            "access_file": resolve_against(base, daemon.access_file) if daemon.access_file else None,
            "check_paths": [resolve_against(base, p) for p in daemon.check_paths],
            "playbook_paths": [resolve_against(base, p) for p in daemon.playbook_paths],
            "tls_cert_file": resolve_against(base, daemon.tls_cert_file) if daemon.tls_cert_file else None,
            "tls_key_file": resolve_against(base, daemon.tls_key_file) if daemon.tls_key_file else None,
        }
    )
    if (problem := folder_problem(daemon.state_dir)) is not None:
        out.add(("daemon", "state_dir"), problem)
    check_files(daemon.api_token_file, daemon.tls_cert_file, daemon.tls_key_file, out)
    if "listen" in raw and not any(p.path[:2] == ("daemon", "listen") for p in out.problems):
        guard = daemon.access_file or daemon.api_token_file
        check_exposure(daemon.listen, daemon.listen_host, guard, out, warnings, filename)
    return daemon


def _check_kinds(data: dict[str, Any], daemon: DaemonConfig, base: Path, out: Collector) -> ExtensionPoint:
    """The check kinds this config can use: built-ins, entry points and drop-ins from its check_paths."""
    explicit_paths = isinstance(data.get("daemon"), dict) and "check_paths" in data["daemon"]
    for i, folder in enumerate(daemon.check_paths):
        if explicit_paths and not folder.is_dir():
            out.add(
                ("daemon", "check_paths", i),
                f"{folder} is not a folder"
                if folder.exists()
                else f"folder {folder} does not exist; create it (mkdir -p {folder}) or remove it from check_paths",
            )
    kinds = CHECK_KINDS.copy()
    for problem in kinds.load_dropins(daemon.check_paths):
        out.add(("daemon", "check_paths"), problem)
    return CHECKS.with_registry(kinds)


def _mapping(value: object, path: Loc, out: Collector) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        out.add(path, f"expected a mapping (key: value), got {type(value).__name__}")
        return {}
    return value


def _named(data: dict[str, Any], section: str, out: Collector) -> dict[str, Any]:
    """A section of named things (services, providers, ...), each name checked as a file name."""
    items = _mapping(data.get(section), (section,), out)
    what = NAMED[(section,)]
    for name in items:
        problem = name_problem(name, what)
        if problem:
            out.add((section, name), problem)
    return items


def _notifier(name: str, raw: object, out: Collector) -> NotifierConfig | None:
    path: Loc = ("notifiers", name)
    found = kind_and_options(path, raw, NOTIFIERS, out)
    if found is None:
        return None
    kind, _, options = found
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


def _image(name: str, raw: object, providers: dict[str, ProviderConfig], out: Collector) -> ImageConfig | None:
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
        out.pydantic(path, exc, vocabulary(ImageModel, RolloutConfig, JudgeConfig))
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
            out.pydantic(where, exc, vocabulary(image_model))
            continue
        if not out.numbers(where, versions[version], spec):
            del versions[version]
    if len(versions) != len(model.versions):
        return None
    return ImageConfig(name, model.provider, versions, model.known_good, model.rollout)


def _dependencies(services: dict[str, ServiceConfig], raw_services: dict[str, Any], out: Collector) -> None:
    """Every service a service depends on is defined, is not itself, and no dependencies go round in a circle."""
    for svc in services.values():
        for i, dep in enumerate(svc.depends_on):
            where = ("services", svc.name, "depends_on", i)
            if dep in svc.depends_on[:i]:
                out.add(where, f"{dep!r} is listed twice in depends_on; remove one of them")
            elif dep == svc.name:
                out.add(where, "a service cannot depend on itself; remove it")
            elif dep not in raw_services:
                known = ", ".join(raw_services)
                out.add(where, f"unknown service {dep!r}{did_you_mean(dep, list(raw_services))}; services: {known}")
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> bool:
        """False once a circle is reported (one report is enough)."""
        if name in path:
            circle = [*path[path.index(name) :], name]
            out.add(
                ("services", name, "depends_on"),
                f"the dependencies go round in a circle: {' -> '.join(circle)}; remove one of them",
            )
            return False
        if name in done or name not in services:
            return True
        ok = all(visit(dep, [*path, name]) for dep in services[name].depends_on if dep != name)
        done.add(name)
        return ok

    for name in services:
        if not visit(name, []):
            return


def _notify_targets(svc: ServiceConfig, notifiers: dict[str, NotifierConfig], out: Collector) -> None:
    """Every notifier a service notifies is defined (unless the notifiers section itself is broken)."""
    for i, n in enumerate(svc.notify):
        if n not in notifiers and "notifiers" not in {p.path[0] for p in out.problems if p.path}:
            out.add(
                ("services", svc.name, "notify", i),
                f"unknown notifier {n!r}{did_you_mean(n, list(notifiers))}; notifiers: "
                f"{', '.join(notifiers) or 'none defined'}",
            )


def _playbooks(
    daemon: DaemonConfig, services: dict[str, ServiceConfig], providers: dict[str, ProviderConfig], out: Collector
) -> None:
    """Every rung of every service's ladder names a playbook that is found and valid, and whose actions the
    service's provider can do (a playbook that could not run is refused here, never ignored at 3 am)."""
    if not any(s.rungs for s in services.values()):
        return
    books, book_problems = load_playbooks(list(daemon.playbook_paths))
    for bp in book_problems:
        out.add(("daemon", "playbook_paths"), f"playbook {bp.render()}")
    if book_problems:
        return
    for svc in services.values():
        ladder = bool(svc.remediation.ladder)
        for i, rung in enumerate(svc.rungs):
            where = ("services", svc.name, "remediation", *(("ladder", i, "playbook") if ladder else ("playbook",)))
            book = books.get(rung.playbook)
            if book is None:
                out.add(
                    where,
                    f"playbook {rung.playbook!r} not found in {', '.join(map(str, daemon.playbook_paths))}"
                    f"{did_you_mean(rung.playbook, list(books))}; playbooks: {', '.join(books) or 'none'}",
                )
                continue
            if ladder and rung.timeout is not None and "machine.launch_replacement" in book.actions:
                out.add(
                    ("services", svc.name, "remediation", "ladder", i, "timeout"),
                    f"rung {rung.playbook!r} launches a replacement: a rung timeout would cut its probation short "
                    "and strand it; remove this timeout (its checks.await_healthy step has its own)",
                )
            provider = providers.get(svc.provider)
            missing = _missing_verbs(book.actions, provider)
            if provider is not None and missing:
                # every verb at once: a user who fixes only the first would be refused again for the next
                verbs = " and ".join(dict.fromkeys(verb for verb, _ in missing))
                actions = ", ".join(dict.fromkeys(action for _, action in missing))
                can = _verbs(provider) or frozenset()
                runnable = [f"{v}-machine" for v in ("restart", "reboot") if v in can] + ["a `command` step"]
                out.add(
                    where,
                    f"playbook {rung.playbook!r} needs its provider to {verbs} machines ({actions}), and provider "
                    f"{provider.name!r} ({provider.kind}) cannot; give the service a playbook or ladder its provider "
                    f"can run ({', '.join(runnable)}), or a provider that does {verbs}",
                )


def _verbs(provider: ProviderConfig | None) -> frozenset[str] | None:
    """What the provider does (None: a kind this loader does not know, refused elsewhere)."""
    kind = PROVIDER_KINDS.get(provider.kind) if provider is not None else None
    if kind is None or provider is None:
        return None
    return kind.verbs_for(provider.options)


def _missing_verbs(actions: tuple[str, ...], provider: ProviderConfig | None) -> list[tuple[str, str]]:
    """The provider verbs the playbook's actions need that the provider does not do: (verb, action) pairs."""
    can = _verbs(provider)
    if can is None:
        return []
    found = []
    for name in actions:
        action = ACTIONS.get(name)
        for verb in sorted(action.verbs - can) if action is not None else ():
            found.append((verb, name))
    return found
