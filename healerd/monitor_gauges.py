"""The monitor's gauges (healerd_machine_up, healerd_service_state, healerd_service_machines) kept from the health
book, and the services' time up or down counted in the history."""

from __future__ import annotations

import contextlib
import time
from collections import Counter as Tally
from collections.abc import Callable

from .events import Event
from .health import Condition, HealthBook, ServiceState
from .machines import Lifecycle
from .metrics import Metrics
from .store import BaseStore

#: lifecycles whose machines are checked (probation: checked, not in rotation)
#: machines whose checks run (an unreachable one's too: they tell when its zone returns)
MONITORED = frozenset({Lifecycle.PROBATION, Lifecycle.IN_SERVICE, Lifecycle.UNREACHABLE})


def counted_states(book: HealthBook, writes: Callable[[], bool]) -> dict[str, bool]:
    """The services whose time up or down this node counts in the history, and whether each is down now: every
    settled service while this node `writes` (the leader, in a cluster), else none."""
    if not writes():
        return {}
    return {n: s.state is ServiceState.DOWN for n, s in book.services.items() if s.settled}


class MonitorGauges:
    def __init__(self, metrics: Metrics, book: HealthBook, *, store: BaseStore, writes: Callable[[], bool]) -> None:
        self.metrics = metrics
        self.book = book
        self.store = store
        self._writes = writes  # this node counts the services' time up or down (the leader, in a cluster)
        self._machine_up = metrics.gauge("machine_up")

    def machine_up(self, service: str, machine_id: str, up: bool) -> None:
        self._machine_up.labels(service, machine_id).set(1 if up else 0)

    def forget_machine(self, service: str, machine_id: str) -> None:
        with contextlib.suppress(KeyError):
            self._machine_up.remove(service, machine_id)

    def on_event(self, event: Event) -> None:
        if event.machine and event.type.value in (
            "machine.unhealthy",
            "machine.recovered",
            "machine.flapping",
        ):
            m = self.book.machine(event.service, event.machine)
            if m is not None and m.lifecycle in MONITORED:
                self.machine_up(event.service, event.machine, m.condition is not Condition.DOWN)
        if event.type.value == "service.state_changed":
            self.update_services()

    def update_services(self) -> None:
        state_g = self.metrics.gauge("service_state")
        machines_g = self.metrics.gauge("service_machines")
        for name, svc in self.book.services.items():
            for st in ServiceState:
                state_g.labels(name, st.value).set(1 if svc.state is st else 0)
            if svc.settled and self._writes():
                self.store.history.book.service_state(name, svc.state is ServiceState.DOWN, time.time())
            tally = Tally(m.lifecycle for m in svc.machines.values())
            for lc in Lifecycle:
                machines_g.labels(name, lc.value).set(tally.get(lc, 0))
