"""Check kinds: the plugin API every kind builds on (the built-ins are registered in `healerd.plugins`)."""

from __future__ import annotations

from .base import Check, CheckEnv, CheckOptions

__all__ = ["Check", "CheckEnv", "CheckOptions"]
