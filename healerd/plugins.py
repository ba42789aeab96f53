"""Every extension point's registry in one module, which registers the built-in check kinds, providers,
rotations, notifiers and playbook actions.

Third-party kinds come from entry points, site-local ones from drop-in files (see `healerd.registry`).
Plugin modules never import this module or the config loader: the arrows point from here to them.
"""

from __future__ import annotations

from typing import Any, TypeVar

from .checks.base import Check
from .checks.dns import DnsCheck
from .checks.exec import ExecCheck
from .checks.grpc import GrpcCheck
from .checks.http import HttpCheck
from .checks.icmp import IcmpCheck
from .checks.prometheus import PrometheusCheck
from .checks.tcp import TcpCheck
from .checks.tls import TlsCheck
from .notifiers.alertmanager import AlertmanagerNotifier
from .notifiers.base import Notifier
from .notifiers.slack import SlackNotifier
from .notifiers.webhook import WebhookNotifier
from .providers.aws import AwsProvider
from .providers.base import Provider
from .providers.command import CommandProvider
from .providers.local import LocalProvider
from .providers.static import StaticProvider
from .registry import Registry
from .remediation.actions import (
    Action,
    AwaitHealthy,
    ForensicsCollect,
    LaunchReplacement,
    MachineQuarantine,
    Notify,
    RotationAdd,
    RotationRemove,
)
from .remediation.repair_actions import MachineReboot, MachineRestart, RunCommand
from .rotations.base import NoRotation, Rotation
from .rotations.elbv2 import Elbv2Rotation
from .rotations.file import FileRotation
from .rotations.haproxy import HaproxyRotation

T = TypeVar("T", bound=type)


def _built_in(registry: Registry[T], *classes: T) -> Registry[T]:
    for cls in classes:
        registry.register(cls)
    return registry


CHECK_KINDS: Registry[type[Check[Any]]] = _built_in(
    Registry("healerd.checks", Check),
    HttpCheck,
    TcpCheck,
    ExecCheck,
    PrometheusCheck,
    DnsCheck,
    GrpcCheck,
    IcmpCheck,
    TlsCheck,
)
PROVIDER_KINDS: Registry[type[Provider]] = _built_in(
    Registry("healerd.providers", Provider), StaticProvider, LocalProvider, AwsProvider, CommandProvider
)
ROTATION_KINDS: Registry[type[Rotation]] = _built_in(
    Registry("healerd.rotations", Rotation), NoRotation, FileRotation, Elbv2Rotation, HaproxyRotation
)
ACTIONS: Registry[type[Action]] = _built_in(
    Registry("healerd.remediation.actions", Action),
    RotationRemove,
    MachineQuarantine,
    ForensicsCollect,
    LaunchReplacement,
    AwaitHealthy,
    RotationAdd,
    Notify,
    MachineRestart,
    MachineReboot,
    RunCommand,
)
NOTIFIER_KINDS: Registry[type[Notifier]] = _built_in(
    Registry("healerd.notifiers", Notifier), WebhookNotifier, SlackNotifier, AlertmanagerNotifier
)

__all__ = ["ACTIONS", "CHECK_KINDS", "NOTIFIER_KINDS", "PROVIDER_KINDS", "ROTATION_KINDS"]
