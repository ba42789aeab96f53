"""Providers: where machines come from (a static list here; local processes and AWS build on this)."""

from __future__ import annotations

from ..registry import Registry
from .aws import AwsProvider
from .base import Provider
from .local import LocalProvider
from .static import StaticProvider

PROVIDER_KINDS: Registry[type[Provider]] = Registry("healerd.providers", Provider)
for _cls in (StaticProvider, LocalProvider, AwsProvider):
    PROVIDER_KINDS.register(_cls)

__all__ = ["PROVIDER_KINDS", "AwsProvider", "LocalProvider", "Provider", "StaticProvider"]
