"""Built-in check kinds and the registry every check kind goes through."""

from __future__ import annotations

from ..registry import Registry
from .base import Check, CheckEnv, CheckOptions
from .exec import ExecCheck
from .http import HttpCheck
from .tcp import TcpCheck

CHECK_KINDS: Registry[type[Check]] = Registry("healerd.checks", Check)  # type: ignore[type-arg]
for _cls in (HttpCheck, TcpCheck, ExecCheck):
    CHECK_KINDS.register(_cls)

__all__ = ["CHECK_KINDS", "Check", "CheckEnv", "CheckOptions"]
