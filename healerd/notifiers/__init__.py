"""Notifier kinds (webhook, Slack, Alertmanager) and the registry every notifier kind goes through."""

from __future__ import annotations

from ..registry import Registry
from .alertmanager import AlertmanagerNotifier
from .base import Delivery, Notifier, NotifierOptions
from .slack import SlackNotifier
from .webhook import WebhookNotifier

NOTIFIER_KINDS: Registry[type[Notifier]] = Registry("healerd.notifiers", Notifier)
for _cls in (WebhookNotifier, SlackNotifier, AlertmanagerNotifier):
    NOTIFIER_KINDS.register(_cls)

__all__ = ["NOTIFIER_KINDS", "Delivery", "Notifier", "NotifierOptions"]
