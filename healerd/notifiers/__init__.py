"""Notifiers: how on-call hears about events (the built-ins are registered in `healerd.plugins`)."""

from __future__ import annotations

from .base import Delivery, Notifier, NotifierOptions

__all__ = ["Delivery", "Notifier", "NotifierOptions"]
