"""A remediation engine on a test bench: a real Store in tmp_path, a real HealthBook and Monitor, a fresh
Prometheus registry, the real `file` rotation, and a recording provider (the one fake: the decisions under
test do not depend on a machine's process). Nothing runs by itself: results are fed in and every call takes
an explicit `now`, so the tests have a fake clock and no sleeps."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from healerd.checks import CheckEnv
from healerd.config import Config, Mode, load_config
from healerd.events import Event, EventBus, EventType
from healerd.health import CheckKey, HealthBook
from healerd.machines import Lifecycle, Machine
from healerd.metrics import Metrics
from healerd.monitor import Monitor
from healerd.providers.base import LaunchRequest, Provider, ProviderError
from healerd.remediation.engine import RemediationEngine
from healerd.remediation.reconcilers import Reconciler
from healerd.results import CheckResult, Status
from healerd.store import Store

CONFIG = """
daemon:
  state_dir: ./state
  playbook_paths: [./playbooks]
  mode: {mode}
providers:
  demo: {{kind: local}}
images:
  demo-web:
    provider: demo
    versions:
      v1: {{command: [python3, -m, healerd.demo, --port, "{{port}}"]}}
    known_good: v1
services:
  web:
    provider: demo
    image: demo-web
    desired: {desired}
    min_healthy: 1
    rotation: {{kind: file, path: ./rotation.json}}
    checks:
      - {{name: health, kind: http, url: "http://{{address}}/health", interval: 1s, timeout: 1s, fall: 2, rise: 2}}
    remediation: {remediation}
"""

#: the playbook of these tests: what replace-machine does, without waiting for checks nobody runs here
PLAYBOOK = """
name: replace-machine
steps:
  - action: rotation.remove
  - action: machine.quarantine
  - action: machine.launch_replacement
  - action: rotation.add
  - action: notify
"""


class RecordingProvider(Provider):
    """Machines that exist only as records: every call is written down; `launch_error` makes launches fail,
    `launch_hangs` makes them never return."""

    kind = "local"

    def __init__(self, name: str, options: Any, store: Store) -> None:
        super().__init__(name, options)
        self.store = store
        self.launched: list[str] = []
        self.quarantined: list[str] = []
        self.terminated: list[str] = []
        self.retired: list[str] = []
        self.restarted: list[str] = []
        self.on_restart: Callable[[str], None] | None = None  # what a restart does to the machine (a test's script)
        self.launch_error: str | None = None
        self.launch_hangs = False
        self.launch_reached = asyncio.Event()  # set once a launch started (hanging or not)
        self._port = 30000

    async def list_machines(self, service: Any) -> list[Machine]:
        return []

    def allocate(self, taken: set[int]) -> tuple[str, dict[str, str]]:
        self._port += 1
        return f"127.0.0.1:{self._port}", {"port": str(self._port)}

    async def launch(self, request: LaunchRequest) -> Machine:
        self.launch_reached.set()
        if self.launch_hangs:
            await asyncio.Event().wait()
        if self.launch_error:
            raise ProviderError(self.launch_error)
        self.launched.append(request.machine_id)
        recorded = await self.store.machines.get(request.service, request.machine_id)
        assert recorded is not None, "healerd records a machine before it launches it"
        return Machine(request.service, request.machine_id, recorded.address, Lifecycle.PROBATION, {"pid": "1"})

    async def quarantine(self, machine: Machine, incident: str | None, freeze: bool = False) -> dict[str, Any]:
        self.quarantined.append(machine.id)
        return {"frozen": freeze}

    async def terminate(self, machine: Machine) -> None:
        self.terminated.append(machine.id)

    async def restart(self, machine: Machine) -> Machine:
        self.restarted.append(machine.id)
        if self.on_restart is not None:
            self.on_restart(machine.id)
        return machine

    async def retire(self, machine: Machine) -> str:
        self.retired.append(machine.id)
        return "terminated"


@dataclass
class Rig:
    tmp_path: Path
    config: Config
    store: Store
    registry: CollectorRegistry
    metrics: Metrics
    bus: EventBus
    monitor: Monitor
    provider: RecordingProvider
    engine: RemediationEngine
    t0: float
    events: list[Event] = field(default_factory=list)

    async def reload(self, config: Config) -> None:
        """What a reload does: the new config is the one in force, and the fleet follows it."""
        self.config = config
        await self.engine.apply()

    @property
    def service(self) -> Any:
        return self.config.services["web"]

    def reconciler(self, cls: type[Any]) -> Reconciler:
        (found,) = [r for r in self.engine.reconcilers if isinstance(r, cls)]
        return found

    async def add(self, machine_id: str, lifecycle: Lifecycle = Lifecycle.IN_SERVICE, **attrs: str) -> Machine:
        m = Machine("web", machine_id, f"127.0.0.1:{20000 + len(self.monitor.machines.get('web', {}))}", lifecycle)
        m = Machine(m.service, m.id, m.address, lifecycle, {"port": m.address.rpartition(":")[2], **attrs})
        await self.monitor.put_machine(m, self.t0)
        if lifecycle is Lifecycle.IN_SERVICE:
            await self.engine.fleet.rotations["web"].add(m)
        return m

    def feed(self, machine_id: str, status: Status, times: int = 1, now: float | None = None) -> None:
        """`times` results of the machine's health check."""
        bc = self.monitor.checks[CheckKey("web", machine_id, "health")]
        for _ in range(times):
            self.monitor.handle(bc, CheckResult(status, f"{status.name} from the rig"), now or self.t0)

    def up(self, *machine_ids: str) -> None:
        for m in machine_ids:
            self.feed(m, Status.OK, 2)

    def down(self, *machine_ids: str) -> None:
        for m in machine_ids:
            self.feed(m, Status.CRITICAL, 2)

    def of(self, type_: EventType) -> list[Event]:
        return [e for e in self.events if e.type is type_]

    def lifecycle(self, machine_id: str) -> Lifecycle | None:
        m = self.monitor.machine("web", machine_id)
        return m.lifecycle if m else None

    def rotation(self) -> set[str]:
        path = self.tmp_path / "rotation.json"
        if not path.exists():
            return set()
        return {label["labels"]["machine"] for label in json.loads(path.read_text())}

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    async def settle(self) -> None:
        """Until the remediations running now end."""
        await asyncio.gather(*self.engine.runbook.running)

    async def close(self) -> None:
        await self.engine.runbook.stop()
        await self.store.flush()
        await self.store.close()


async def make_rig(
    tmp_path: Path,
    desired: int = 3,
    mode: Mode = Mode.AUTO,
    remediation: str = "{max_unhealthy: 50%}",
    playbook: str = PLAYBOOK,
) -> Rig:
    (tmp_path / "playbooks").mkdir(exist_ok=True)
    (tmp_path / "playbooks" / "replace-machine.yaml").write_text(playbook)
    path = tmp_path / "healerd.yaml"
    path.write_text(CONFIG.format(mode=mode.value, desired=desired, remediation=remediation))
    config = load_config(path)
    store = Store(config.daemon.state_dir)
    await store.open()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    bus = EventBus()
    bus.subscribe(store.events.add)  # as the daemon does: the event log feeds incident timelines
    monitor = Monitor(HealthBook(), bus, metrics=metrics, store=store, env=CheckEnv((), tmp_path), max_concurrent=8)
    provider = RecordingProvider("demo", config.providers["demo"].options, store)
    monitor.providers["demo"] = provider
    t0 = time.time()
    await monitor.apply(config, t0)
    rigs: list[Rig] = []  # the config in force is the rig's: a test reloads through Rig.reload
    engine = RemediationEngine(
        lambda: rigs[0].config if rigs else config, monitor, store=store, bus=bus, metrics=metrics
    )
    assert engine.load_playbooks(config) == []
    await engine.apply()
    await engine.controls.load()
    engine.runbook.retry_delay = lambda attempts: 0.0
    rig = Rig(tmp_path, config, store, registry, metrics, bus, monitor, provider, engine, t0)
    rigs.append(rig)
    bus.subscribe(rig.events.append)
    return rig
