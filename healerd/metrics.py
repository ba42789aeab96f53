"""Prometheus metrics: every metric of the contract declared once, in one table."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics import MetricWrapperBase

from ._version import __version__

if TYPE_CHECKING:
    from .config import Config

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricDef:
    name: str  # without the healerd_ prefix; counters without _total (the client adds it)
    kind: Kind
    doc: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None


CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REMEDIATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)

METRICS: tuple[MetricDef, ...] = (
    MetricDef("check_runs", "counter", "Check runs by outcome status.", ("service", "check", "status")),
    MetricDef(
        "check_duration_seconds",
        "histogram",
        "How long check runs take.",
        ("service", "check"),
        CHECK_BUCKETS,
    ),
    MetricDef("machine_up", "gauge", "1 when the machine is not hard down, else 0.", ("service", "machine")),
    MetricDef(
        "service_state",
        "gauge",
        "1 for the service's current state (optimal, degraded, down).",
        ("service", "state"),
    ),
    MetricDef("service_machines", "gauge", "Machines of the service by lifecycle.", ("service", "lifecycle")),
    MetricDef("remediations", "counter", "Remediations run, by outcome.", ("service", "playbook", "outcome")),
    MetricDef(
        "remediation_rungs",
        "counter",
        "Rungs of the escalation ladder tried, by outcome (healed, replaced, done, failed, timed_out, skipped).",
        ("service", "playbook", "outcome"),
    ),
    MetricDef(
        "remediation_duration_seconds",
        "histogram",
        "How long remediations take.",
        ("service", "playbook"),
        REMEDIATION_BUCKETS,
    ),
    MetricDef("remediations_in_progress", "gauge", "Remediations running now.", ("service",)),
    MetricDef("remediation_suppressed", "counter", "Remediations held back by a safety gate.", ("service", "reason")),
    MetricDef(
        "incidents_held",
        "gauge",
        "Open incidents a safety gate holds back now, by the gate (0 for every gate that holds none).",
        ("service", "reason"),
    ),
    MetricDef("quarantined_machines", "gauge", "Machines in quarantine.", ("service",)),
    MetricDef(
        "zone_lost",
        "gauge",
        "1 while a zone of the service is lost (its machines unreachable, their share launched elsewhere), else 0.",
        ("service", "zone"),
    ),
    MetricDef("notifications", "counter", "Notification deliveries by outcome.", ("notifier", "outcome")),
    MetricDef("notification_queue_depth", "gauge", "Notifications waiting in the outbox.", ("notifier",)),
    MetricDef(
        "scheduler_lag_seconds",
        "histogram",
        "How late checks start compared with when they were due.",
        (),
        (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    ),
    MetricDef(
        "scheduler_missed_runs",
        "counter",
        "Check runs skipped because the previous run of the same check was still going.",
        ("service", "check"),
    ),
    MetricDef("events", "counter", "Events published, by type.", ("type",)),
    MetricDef(
        "api_requests",
        "counter",
        "API requests by credential (its name; anonymous, invalid) and outcome (allowed, unauthenticated, forbidden).",
        ("credential", "outcome"),
    ),
    MetricDef("store_writable", "gauge", "1 while the state store accepts writes, 0 while it fails (disk full).", ()),
    MetricDef("store_errors", "counter", "Failed state store operations (each is retried).", ()),
    MetricDef("config_reloads", "counter", "Config reloads by outcome (success, failure).", ("outcome",)),
    MetricDef(
        "rotation_repairs",
        "counter",
        "Times the load balancer had lost the rotation and it was re-applied.",
        ("service",),
    ),
    MetricDef(
        "notifier_up",
        "gauge",
        "1 while the notifier's receiver took its last message, 0 while it fails (messages wait in the outbox).",
        ("notifier",),
    ),
    MetricDef(
        "rotation_up",
        "gauge",
        "1 while the service's load balancer answered when last compared with the rotation, 0 while it fails.",
        ("service",),
    ),
    MetricDef("rollouts", "counter", "Rollouts ended, by outcome (completed, rolled_back).", ("service", "outcome")),
    MetricDef(
        "rollout_stage",
        "gauge",
        "1 for the stage of the service's running rollout (canary, bake, promoted, refresh, rolled_back).",
        ("service", "stage"),
    ),
    MetricDef("cluster_nodes", "gauge", "Live nodes of the cluster (fresh heartbeat), as this node sees them.", ()),
    MetricDef(
        "cluster_leader",
        "gauge",
        "1 for the leader (this node: once its takeover finished), 0 for the other live nodes.",
        ("node",),
    ),
    MetricDef("cluster_epoch", "gauge", "The leader lease's epoch (grows at every takeover).", ()),
    MetricDef("cluster_shard_machines", "gauge", "Machines each live node checks (its shard).", ("node",)),
    MetricDef("cluster_leader_changes", "counter", "Times this node became or stopped being the leader.", ("change",)),
    MetricDef("cluster_fenced_writes", "counter", "Leader-only writes of this node refused by epoch.", ()),
    MetricDef("cluster_lease_errors", "counter", "Lease rounds that failed (database unreachable, timeout).", ()),
    MetricDef(
        "cluster_takeover_retries",
        "counter",
        "Takeovers that failed and were tried again (the store still reconnecting after an outage).",
        (),
    ),
    MetricDef("cluster_mirror_lag_seconds", "gauge", "Age of the newest result taken from another node.", ()),
    MetricDef("alert_inputs_checks", "gauge", "Virtual checks alert:<name> that exist now (firing or resolved).", ()),
    MetricDef(
        "alert_inputs_refused",
        "counter",
        "Alerts posted to /api/v1/alerts that were not taken, by reason (per_machine, total, name_too_long, "
        "unmatched).",
        ("reason",),
    ),
)


class Metrics:
    """The collectors of one daemon, registered in `registry` (tests pass a fresh CollectorRegistry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._by_name: dict[str, MetricWrapperBase] = {}
        for d in METRICS:
            full = f"healerd_{d.name}"
            metric: MetricWrapperBase
            if d.kind == "counter":
                metric = Counter(full, d.doc, d.labels, registry=self.registry)
            elif d.kind == "gauge":
                metric = Gauge(full, d.doc, d.labels, registry=self.registry)
            else:
                metric = Histogram(
                    full,
                    d.doc,
                    d.labels,
                    registry=self.registry,
                    buckets=d.buckets or Histogram.DEFAULT_BUCKETS,
                )
            self._by_name[d.name] = metric
        self.build_info = Info("healerd_build", "healerd version.", registry=self.registry)
        self.build_info.info({"version": __version__})

    def counter(self, name: str) -> Counter:
        m = self._by_name[name]
        assert isinstance(m, Counter)
        return m

    def gauge(self, name: str) -> Gauge:
        m = self._by_name[name]
        assert isinstance(m, Gauge)
        return m

    def histogram(self, name: str) -> Histogram:
        m = self._by_name[name]
        assert isinstance(m, Histogram)
        return m


#: the outcomes a counter's last label takes, for priming (every series exists from the start, at 0, so a
#: rule's increase() counts the first event)
OUTCOMES: dict[str, tuple[str, ...]] = {
    "remediations": ("succeeded", "failed"),
    "remediation_rungs": ("healed", "replaced", "done", "failed", "timed_out", "skipped"),
    "notifications": ("delivered", "retry", "rate_limited", "dead"),
    "rollouts": ("completed", "rolled_back"),
    "config_reloads": ("success", "failure"),
    "alert_inputs_refused": ("per_machine", "total", "name_too_long", "unmatched"),
}


def prime(metrics: Metrics, config: Config, reasons: Iterable[str], event_types: Iterable[str]) -> None:
    """Create the counters' series of the config's services and notifiers at 0 (idempotent: a reload adds the
    new ones, existing values are kept)."""
    for outcome in OUTCOMES["config_reloads"]:
        metrics.counter("config_reloads").labels(outcome)
    for reason in OUTCOMES["alert_inputs_refused"]:
        metrics.counter("alert_inputs_refused").labels(reason)
    for kind in event_types:
        metrics.counter("events").labels(kind)
    for name in config.notifiers:
        for outcome in OUTCOMES["notifications"]:
            metrics.counter("notifications").labels(name, outcome)
    for svc in config.services.values():
        for reason in reasons:
            metrics.counter("remediation_suppressed").labels(svc.name, reason)
            metrics.gauge("incidents_held").labels(svc.name, reason)
        metrics.counter("rotation_repairs").labels(svc.name)
        if svc.managed:
            for outcome in OUTCOMES["remediations"]:
                metrics.counter("remediations").labels(svc.name, svc.remediation.playbook, outcome)
        for rung in svc.rungs:
            for outcome in OUTCOMES["remediation_rungs"]:
                metrics.counter("remediation_rungs").labels(svc.name, rung.playbook, outcome)
        if svc.image:
            for outcome in OUTCOMES["rollouts"]:
                metrics.counter("rollouts").labels(svc.name, outcome)
