"""Providers: where machines come from (the built-ins are registered in `healerd.plugins`)."""

from __future__ import annotations

from .base import Provider

__all__ = ["Provider"]
