"""The one validator of `{kind: ..., **options}`, for every extension point a config names a kind of:
the kind comes from the point's registry, its options are validated by the kind's own `Config` model."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from ..plugins import CHECK_KINDS, NOTIFIER_KINDS, PROVIDER_KINDS, ROTATION_KINDS
from ..registry import Registry
from ..words import did_you_mean
from .problems import Collector, Loc, vocabulary


@dataclass(frozen=True)
class ExtensionPoint:
    registry: Registry[Any]
    #: names the point in messages: "unknown provider kind 'x'"
    what: str
    #: what to write where something other than a mapping was found
    shape: str
    #: the kind when none is written (None: a kind is required)
    default_kind: str | None = None
    #: said after the known kinds when the kind is unknown
    hint: str = ""

    def with_registry(self, registry: Registry[Any]) -> ExtensionPoint:
        return replace(self, registry=registry)


PROVIDERS = ExtensionPoint(PROVIDER_KINDS, "provider", "a mapping like {kind: static}")
NOTIFIERS = ExtensionPoint(NOTIFIER_KINDS, "notifier", "a mapping like {kind: webhook, url: ...}")
ROTATIONS = ExtensionPoint(ROTATION_KINDS, "rotation", "a mapping like {kind: file}", default_kind="none")
#: a config's own check kinds add its drop-ins to these (`with_registry`)
CHECKS = ExtensionPoint(
    CHECK_KINDS,
    "check",
    "a mapping with name, kind, interval, ...",
    hint=" (drop-ins go in daemon.check_paths)",
)


def kind_and_options(
    path: Loc, raw: object, point: ExtensionPoint, out: Collector, shared: Collection[str] = ()
) -> tuple[str, Any, Any] | None:
    """The kind, its class and its validated options; None after reporting every problem with its path.

    `shared` are keys the caller validates itself because every kind of the point has them (a check's name,
    interval, ...); they are not the kind's options. When `kind` is one of them, the caller's model reports
    a missing kind too.
    """
    if not isinstance(raw, dict):
        out.add(path, f"expected {point.shape}")
        return None
    kind = raw.get("kind", point.default_kind)
    kinds = point.registry.kinds()
    if not isinstance(kind, str):
        if "kind" not in shared:
            out.add(path, f"missing 'kind'; one of: {', '.join(kinds)}")
        return None
    cls = point.registry.get(kind)
    if cls is None:
        out.add(
            (*path, "kind"),
            f"unknown {point.what} kind {kind!r}{did_you_mean(kind, kinds)}; known kinds: {', '.join(kinds)}"
            + point.hint,
        )
        return None
    raw_options = {k: v for k, v in raw.items() if k != "kind" and k not in shared}
    try:
        options = cls.Config.model_validate(raw_options)
    except ValidationError as exc:
        out.pydantic(path, exc, vocabulary(cls.Config) | {"kind", *shared})
        return None
    if not out.numbers(path, options, raw_options):
        return None
    return kind, cls, options
