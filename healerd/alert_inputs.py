"""Alerts as check inputs (DESIGN §18): Alertmanager's webhook (payload version 4) posted to
`POST /api/v1/alerts`. Each alert names a machine by its labels (`alert_inputs:`); a firing alert is a
CRITICAL result (WARNING when its `severity` label says warning) of the machine's virtual check
`alert:<alertname>`, a resolved one is OK, and one not renewed by its `endsAt` expires to OK. The results go
through the machine's health like any check's (rise/fall, flapping), hence through every safety gate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from .health import CheckKey, Thresholds
from .results import CheckResult, Status

if TYPE_CHECKING:
    from .config import Config
    from .monitor import Monitor

log = structlog.get_logger("healerd.alerts")

PREFIX = "alert:"


def _time(text: object) -> float | None:
    """An RFC 3339 time of Alertmanager's; None for its zero time ('0001-01-01T00:00:00Z') or nonsense."""
    if not isinstance(text, str) or text.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class AlertInputs:
    monitor: Monitor
    config: Config
    #: virtual checks firing now, with when their alert is due to end (expired to OK after it)
    firing: dict[CheckKey, float] = field(default_factory=dict)

    def receive(self, payload: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        """Apply one webhook message; says what each alert became (or why it was not taken)."""
        now = time.time() if now is None else now
        opts = self.config.alert_inputs
        taken, unmatched = [], []
        for alert in payload.get("alerts", []):
            labels = {str(k): str(v) for k, v in (alert.get("labels") or {}).items()}
            name = labels.get("alertname", "")
            service, machine = labels.get(opts.service_label, ""), labels.get(opts.machine_label, "")
            mid = self._machine(service, machine)
            if not name or mid is None:
                unmatched.append(
                    {
                        "alertname": name,
                        "labels": labels,
                        "why": f"no machine {machine!r} in service {service!r} (labels {opts.service_label!r} and "
                        f"{opts.machine_label!r}: a machine id or address)",
                    }
                )
                continue
            key = CheckKey(service, mid, PREFIX + name)
            notes = alert.get("annotations") or {}
            text = str(notes.get("summary") or notes.get("description") or "")[:500]
            if alert.get("status") == "resolved":
                result = CheckResult(Status.OK, f"alert {name} resolved")
                self.firing.pop(key, None)
            else:
                status = Status.WARNING if labels.get("severity", "").lower() == "warning" else Status.CRITICAL
                result = CheckResult(status, f"alert {name} firing" + (f": {text}" if text else ""))
                self.firing[key] = _time(alert.get("endsAt")) or now + 300
            self._observe(key, result, now)
            taken.append({"service": service, "machine": mid, "check": key.check, "status": result.status.name})
        if unmatched:
            log.warning("alerts not matched to a machine", count=len(unmatched), first=unmatched[0]["why"])
        return {"accepted": len(taken), "results": taken, "unmatched": unmatched}

    def expire(self, now: float | None = None) -> int:
        """Alerts past their endsAt without an update are over: their virtual checks read OK."""
        now = time.time() if now is None else now
        done = [k for k, ends in self.firing.items() if ends < now]
        for key in done:
            del self.firing[key]
            if self.monitor.book.check(key) is not None:
                self._observe(key, CheckResult(Status.OK, f"{key.check} expired: not renewed by its endsAt"), now)
        return len(done)

    def _machine(self, service: str, label: str) -> str | None:
        machines = self.monitor.machines.get(service, {})
        if label in machines:
            return label
        return next((m.id for m in machines.values() if m.address == label), None)

    def _observe(self, key: CheckKey, result: CheckResult, now: float) -> None:
        opts = self.config.alert_inputs
        if self.monitor.book.check(key) is None:
            self.monitor.book.set_check(key, Thresholds(fall=opts.fall, rise=opts.rise))
        self.monitor.store.results.add(key, result, now)
        self.monitor.observe_input(key, result, now)
