"""Alerts as check inputs: Alertmanager's webhook (payload version 4) posted to `POST /api/v1/alerts`. Each alert
names a machine by its labels (`alert_inputs:`); a firing alert is a CRITICAL result (WARNING when its `severity`
label says warning) of the machine's virtual check `alert:<alertname>`, a resolved one is OK, and one not renewed
by its `endsAt` expires to OK. The results go through the machine's health like any check's (rise/fall,
flapping), hence through every safety gate.

Virtual checks are bounded, per machine and in all (`alert_inputs.max_per_machine`, `max_total`): a new alert
name past a bound is refused and counted, never allowed to grow the book (every check of a machine is looked at
on each of its results). A resolved check stays visible for RESOLVED_KEPT, then goes; when a bound is reached,
a new name takes the place of the oldest resolved check first."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from .health import CheckKey, Thresholds
from .results import CheckResult, Status
from .store.text import printable

if TYPE_CHECKING:
    from .config import Config
    from .metrics import Metrics
    from .monitor import Monitor

log = structlog.get_logger("healerd.alerts")

PREFIX = "alert:"
#: the longest alert name taken (the check is `alert:<name>`)
NAME_MAX = 200
#: the longest summary kept as the check's message
TEXT_MAX = 500
#: how long a resolved alert's virtual check stays (OK) before it is removed
RESOLVED_KEPT = 300.0
#: alerts listed per kind (taken, unmatched, refused) in the answer to one message; the totals are given too
LISTED = 50
#: unmatched alerts are logged at most this often (with how many there were)
UNMATCHED_LOG_EVERY = 60.0


class Refusal(enum.StrEnum):
    """Why an alert was not taken (the `reason` label of healerd_alert_inputs_refused_total)."""

    PER_MACHINE = "per_machine"
    TOTAL = "total"
    NAME_TOO_LONG = "name_too_long"
    UNMATCHED = "unmatched"


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
    #: the config in force (read at each message: a reload changes the bounds and labels)
    current_config: Callable[[], Config]
    metrics: Metrics | None = field(default=None, kw_only=True)
    #: virtual checks firing now, with when their alert is due to end (expired to OK after it)
    firing: dict[CheckKey, float] = field(default_factory=dict, init=False)
    #: virtual checks whose alert is over, with when it ended, oldest first (removed after RESOLVED_KEPT)
    resolved: dict[CheckKey, float] = field(default_factory=dict, init=False)
    #: the virtual checks of each (service, machine)
    _by_machine: dict[tuple[str, str], set[CheckKey]] = field(default_factory=dict, init=False, repr=False)
    #: machines that refused a new name (at max_per_machine), and whether max_total refused one: the log says
    #: once when the first is reached and once when none is any more, not once per machine or per alert
    _full: set[tuple[str, str]] = field(default_factory=set, init=False, repr=False)
    _total_full: bool = field(default=False, init=False, repr=False)
    _unmatched_since_log: int = field(default=0, init=False, repr=False)
    _unmatched_logged_at: float = field(default=0.0, init=False, repr=False)

    @property
    def config(self) -> Config:
        return self.current_config()

    @property
    def count(self) -> int:
        return len(self.firing) + len(self.resolved)

    def receive(self, payload: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        """Apply one webhook message; says what each alert became, or why it was not taken (`unmatched`: no such
        machine; `refused`: past a bound)."""
        now = time.time() if now is None else now
        opts = self.config.alert_inputs
        taken: list[dict[str, Any]] = []
        unmatched: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        by_address: dict[str, dict[str, str]] = {}  # per service, built once per message: no scan per alert
        for alert in payload.get("alerts", []):
            labels = {str(k): str(v) for k, v in (alert.get("labels") or {}).items()}
            name = printable(labels.get("alertname", ""))
            service, machine = labels.get(opts.service_label, ""), labels.get(opts.machine_label, "")
            mid = self._machine(service, machine, by_address)
            if not name or mid is None:
                unmatched.append(
                    {
                        "alertname": name,
                        "labels": labels,
                        "why": f"no machine {machine!r} in service {service!r} (labels {opts.service_label!r} and "
                        f"{opts.machine_label!r}: a machine id or address)"
                        if name
                        else "no alertname label",
                    }
                )
                continue
            key = CheckKey(service, mid, PREFIX + name)
            resolved = alert.get("status") == "resolved"
            if not resolved and key not in self.firing and key not in self.resolved:
                why = self._room_for(key, now)
                if why is not None:
                    refused.append({"alertname": name[:NAME_MAX], "service": service, "machine": mid, **why})
                    continue
            taken.append(self._apply(key, alert, labels, resolved, now))
        self._count_refused(unmatched, refused, now)
        # the answer stays small whatever the message: the first ones of each list, and how many there were
        return {
            "accepted": len(taken),
            "results": taken[:LISTED],
            "unmatched": unmatched[:LISTED],
            "refused": refused[:LISTED],
            "unmatched_total": len(unmatched),
            "refused_total": len(refused),
            **(
                {"listed": f"the first {LISTED} of each list"}
                if max(len(taken), len(unmatched), len(refused)) > LISTED
                else {}
            ),
        }

    def _apply(
        self, key: CheckKey, alert: dict[str, Any], labels: dict[str, str], resolved: bool, now: float
    ) -> dict[str, Any]:
        name = key.check.removeprefix(PREFIX)
        if resolved:
            result = CheckResult(Status.OK, f"alert {name} resolved")
            if key in self.firing or key in self.resolved:  # a check that does not exist has nothing to clear
                self._resolve(key, result, now)
        else:
            notes = alert.get("annotations") or {}
            text = printable(str(notes.get("summary") or notes.get("description") or "")[:TEXT_MAX])
            status = Status.WARNING if labels.get("severity", "").lower() == "warning" else Status.CRITICAL
            result = CheckResult(status, f"alert {name} firing" + (f": {text}" if text else ""))
            self.resolved.pop(key, None)
            self.firing[key] = _time(alert.get("endsAt")) or now + 300
            self._by_machine.setdefault((key.service, key.machine), set()).add(key)
            self._observe(key, result, now)
        return {"service": key.service, "machine": key.machine, "check": key.check, "status": result.status.name}

    def _room_for(self, key: CheckKey, now: float) -> dict[str, Any] | None:
        """None when a new virtual check `key` may be added (making room by removing the oldest resolved check
        of its machine or of the fleet when a bound is reached); else why not (`reason`, `why`)."""
        opts = self.config.alert_inputs
        name = key.check.removeprefix(PREFIX)
        if len(name) > NAME_MAX:
            return {
                "reason": Refusal.NAME_TOO_LONG.value,
                "why": f"the alert name has {len(name)} characters; healerd takes names of at most {NAME_MAX}",
            }
        mine = self._by_machine.get((key.service, key.machine), set())
        if len(mine) >= opts.max_per_machine:
            oldest = min((k for k in mine if k in self.resolved), key=self.resolved.__getitem__, default=None)
            if oldest is None:
                self._reached_machine((key.service, key.machine), opts.max_per_machine)
                return {
                    "reason": Refusal.PER_MACHINE.value,
                    "why": f"machine {key.machine} already has {len(mine)} alerts firing, the bound "
                    f"(alert_inputs.max_per_machine: {opts.max_per_machine}); it takes a new alert name once one "
                    "of them resolves",
                }
            self._remove(oldest, now)
        if self.count >= opts.max_total:
            if not self.resolved:
                self._reached_total(opts.max_total)
                return {
                    "reason": Refusal.TOTAL.value,
                    "why": f"the fleet already has {self.count} alerts firing, the bound (alert_inputs.max_total: "
                    f"{opts.max_total}); healerd takes a new alert name once one of them resolves",
                }
            self._remove(next(iter(self.resolved)), now)
        return None

    def expire(self, now: float | None = None) -> int:
        """Alerts past their endsAt without an update are over: their virtual checks read OK. Resolved checks older
        than RESOLVED_KEPT are removed, and so are the checks of machines that went away. Returns how many
        alerts expired."""
        now = time.time() if now is None else now
        book = self.monitor.book
        gone = [k for k in self.firing if book.check(k) is None]  # its machine or service went away
        for key in gone:
            self._forget(key)
        done = [k for k, ends in self.firing.items() if ends < now]
        for key in done:
            self._resolve(key, CheckResult(Status.OK, f"{key.check} expired: not renewed by its endsAt"), now)
        stale = []
        for key, at in self.resolved.items():  # oldest first
            if at > now - RESOLVED_KEPT:
                break
            stale.append(key)
        for key in stale:
            self._remove(key, now)
        self._gauge()
        return len(done)

    # -- the book ---------------------------------------------------------------------------------------------
    def _machine(self, service: str, label: str, by_address: dict[str, dict[str, str]]) -> str | None:
        """The id of the machine `label` names in `service` (its id, or its address), or None."""
        machines = self.monitor.machines.get(service)
        if machines is None:
            return None
        if label in machines:
            return label
        if service not in by_address:
            index = by_address[service] = {}
            for m in machines.values():
                index.setdefault(m.address, m.id)  # two machines at one address: the first, as listed
        return by_address[service].get(label)

    def _observe(self, key: CheckKey, result: CheckResult, now: float) -> None:
        opts = self.config.alert_inputs
        if self.monitor.book.check(key) is None:
            self.monitor.book.set_check(key, Thresholds(fall=opts.fall, rise=opts.rise))
        self.monitor.observe_input(key, result, now)

    def _resolve(self, key: CheckKey, result: CheckResult, now: float) -> None:
        self.firing.pop(key, None)
        self.resolved.pop(key, None)
        self.resolved[key] = now  # newest last
        if self.monitor.book.check(key) is not None:
            self.monitor.observe_input(key, result, now)

    def _remove(self, key: CheckKey, now: float) -> None:
        """The virtual check is over: out of the book (the machine's health is recomputed without it)."""
        self._forget(key)
        self.monitor.remove_input(key, now)

    def _forget(self, key: CheckKey) -> None:
        self.firing.pop(key, None)
        self.resolved.pop(key, None)
        where = (key.service, key.machine)
        mine = self._by_machine.get(where)
        if mine is not None:
            mine.discard(key)
            if not mine:
                del self._by_machine[where]
        self._freed(where)

    # -- bounds: counted, and logged once each way ------------------------------------------------------------
    def _reached_machine(self, where: tuple[str, str], limit: int) -> None:
        if not self._full:
            log.warning(
                "alert inputs: a machine has as many alerts as it may; its new alert names are refused until some "
                "resolve",
                service=where[0],
                machine=where[1],
                bound=f"alert_inputs.max_per_machine: {limit}",
                hint="raise it if so many distinct alerts per machine are expected; healerd_alert_inputs_refused_total "
                "counts the refused ones",
            )
        self._full.add(where)

    def _reached_total(self, limit: int) -> None:
        if not self._total_full:
            log.warning(
                "alert inputs: the fleet has as many alerts as it may; new alert names are refused until some resolve",
                bound=f"alert_inputs.max_total: {limit}",
                hint="raise it if so many distinct alerts are expected; healerd_alert_inputs_refused_total counts "
                "the refused ones",
            )
        self._total_full = True

    def _freed(self, where: tuple[str, str]) -> None:
        opts = self.config.alert_inputs
        if where in self._full and len(self._by_machine.get(where, ())) < opts.max_per_machine:
            self._full.discard(where)
            if not self._full:
                log.info("alert inputs: no machine is at alert_inputs.max_per_machine any more")
        if self._total_full and self.count < opts.max_total:
            self._total_full = False
            log.info("alert inputs: the fleet is below alert_inputs.max_total again")

    def _count_refused(self, unmatched: list[dict[str, Any]], refused: list[dict[str, Any]], now: float) -> None:
        if self.metrics is not None:
            counter = self.metrics.counter("alert_inputs_refused")
            if unmatched:
                counter.labels(Refusal.UNMATCHED.value).inc(len(unmatched))
            for item in refused:
                counter.labels(item["reason"]).inc()
        self._gauge()
        if unmatched:
            self._unmatched_since_log += len(unmatched)
            if now - self._unmatched_logged_at >= UNMATCHED_LOG_EVERY:
                log.warning(
                    "alerts not matched to a machine",
                    count=self._unmatched_since_log,
                    first=unmatched[0]["why"],
                    hint="the answer to each POST lists them; this line is written at most once a minute",
                )
                self._unmatched_since_log, self._unmatched_logged_at = 0, now

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.gauge("alert_inputs_checks").set(self.count)
