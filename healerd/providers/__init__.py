"""Providers: where machines come from (a static list here; local processes and AWS build on this)."""

from __future__ import annotations

from ..registry import Registry
from .base import Provider
from .static import StaticProvider

PROVIDER_KINDS: Registry[type[Provider]] = Registry("healerd.providers", Provider)
PROVIDER_KINDS.register(StaticProvider)

__all__ = ["PROVIDER_KINDS", "Provider", "StaticProvider"]
