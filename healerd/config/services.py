"""The services section: each service's provider, image, rotation, machines and checks, cross-checked."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from pydantic import ValidationError

from ..checks.base import CheckEnv
from ..durations import parse_count_or_percent
from ..results import Status
from ..targets import SERVICE_TEMPLATE_FIELDS, TEMPLATE_FIELDS
from ..words import did_you_mean, find_template_problems
from .kinds import ROTATIONS, ExtensionPoint, kind_and_options
from .models import (
    CheckCommon,
    CheckSpec,
    DiscoveryModel,
    ImageConfig,
    MachineSpec,
    ProviderConfig,
    RemediationConfig,
    ServiceConfig,
    ServiceModel,
)
from .problems import Collector, Loc, vocabulary

_COMMON_FIELDS = frozenset(CheckCommon.model_fields)


def load_service(
    name: str,
    raw: object,
    providers: dict[str, ProviderConfig],
    images: dict[str, ImageConfig],
    checks: ExtensionPoint,
    env: CheckEnv,
    out: Collector,
    broken_images: frozenset[str] = frozenset(),
) -> ServiceConfig | None:
    """`broken_images`: images whose own errors are listed already (the service using one is not valid either,
    without a second message)."""
    path: Loc = ("services", name)
    if not isinstance(raw, dict):
        out.add(path, "expected a mapping with provider, checks, ...")
        return None
    try:
        model = ServiceModel.model_validate(raw)
    except ValidationError as exc:
        out.pydantic(path, exc, vocabulary(ServiceModel, MachineSpec, RemediationConfig, DiscoveryModel))
        # still look at the checks so that every problem is listed at once
        for group in ("checks", "service_checks"):
            items = raw.get(group)
            if isinstance(items, list):
                _checks(items, (*path, group), checks, env, out)
        return None
    ok = out.numbers(path, model, raw)
    ok = _provider_and_image(path, model, providers, images, out, broken_images) and ok
    rotation = kind_and_options((*path, "rotation"), raw.get("rotation") or {}, ROTATIONS, out)
    ok = rotation is not None and ok
    seen: set[str] = set()
    for i, m in enumerate(model.machines):
        if m.id in seen:
            out.add((*path, "machines", i, "id"), f"machine id {m.id!r} appears twice; ids must be unique")
            ok = False
        seen.add(m.id)
    machine_checks = _checks(model.checks, (*path, "checks"), checks, env, out)
    service_checks = _checks(model.service_checks, (*path, "service_checks"), checks, env, out, per_machine=False)
    desired = model.desired if model.desired is not None else len(model.machines)
    count, is_pct = parse_count_or_percent(model.min_healthy)
    min_healthy = math.ceil(desired * count / 100) if is_pct else count
    if min_healthy > desired:
        out.add((*path, "min_healthy"), f"min_healthy ({min_healthy}) is more than desired ({desired})")
        ok = False
    if not ok or rotation is None or machine_checks is None or service_checks is None:
        return None
    rotation_kind, _, rotation_options = rotation
    mu_count, mu_pct = parse_count_or_percent(model.remediation.max_unhealthy)
    max_unhealthy = math.floor(desired * mu_count / 100) if mu_pct else mu_count
    return ServiceConfig(
        name=name,
        provider=model.provider,
        desired=desired,
        min_healthy=min_healthy,
        machines=tuple(model.machines),
        checks=machine_checks,
        service_checks=service_checks,
        image=model.image,
        rotation_kind=rotation_kind,
        rotation=rotation_options,
        remediation=model.remediation,
        max_unhealthy=max_unhealthy,
        notify=tuple(model.notify),
        discovery=model.discovery.model_dump(exclude_none=True) if model.discovery else None,
        depends_on=tuple(model.depends_on),
    )


def _provider_and_image(
    path: Loc,
    model: ServiceModel,
    providers: dict[str, ProviderConfig],
    images: dict[str, ImageConfig],
    out: Collector,
    broken_images: frozenset[str] = frozenset(),
) -> bool:
    """The service's provider exists and suits it (static ones list machines, others launch from an image)."""
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
        if image is None and model.image in broken_images:
            ok = False  # its errors are listed under images:
        elif image is None:
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
    return ok


def _checks(
    items: list[Any], path: Loc, kinds: ExtensionPoint, env: CheckEnv, out: Collector, per_machine: bool = True
) -> tuple[CheckSpec, ...] | None:
    specs: list[CheckSpec] = []
    names: set[str] = set()
    failed = False
    for i, raw in enumerate(items):
        spec = _check(raw, (*path, i), kinds, env, out, per_machine)
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


def _check(
    raw: object, path: Loc, kinds: ExtensionPoint, env: CheckEnv, out: Collector, per_machine: bool
) -> CheckSpec | None:
    before = len(out.problems)
    found = kind_and_options(path, raw, kinds, out, shared=_COMMON_FIELDS)
    if not isinstance(raw, dict):
        return None
    common: CheckCommon | None = None
    try:
        common = CheckCommon.model_validate(raw)
        out.numbers(path, common, raw)
    except ValidationError as exc:
        out.pydantic(path, exc, set(_COMMON_FIELDS))
    kind_raw = {k: v for k, v in raw.items() if k not in _COMMON_FIELDS}
    allowed = TEMPLATE_FIELDS if per_machine else SERVICE_TEMPLATE_FIELDS
    for rel, message in find_template_problems(kind_raw, allowed):
        out.add((*path, *rel), message)
    if found is not None and len(out.problems) == before:
        _, cls, options = found
        try:
            preflight = list(cls.preflight(options, env))
        except OSError as exc:  # a plugin's name longer than a file name can be, say
            name = str(exc.filename or "")
            shown = name if len(name) <= 80 else name[:77] + "..."
            preflight = [((), f"cannot look up {shown!r}: {exc.strerror or exc}; fix the name or path it uses")]
        for rel, message in preflight:
            out.add((*path, *rel), message)
    if len(out.problems) > before or common is None or found is None:
        return None
    _, cls, options = found
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
