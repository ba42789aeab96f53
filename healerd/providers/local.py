"""`local` provider: machines are processes on this host, launched from an image version's command.

Each machine runs in its own session and process group with its output captured to a log file. The
process carries HEALERD_MACHINE_ID in its environment, so a machine whose launch was interrupted by a
crash is found again (never orphaned); machines outlive a healerd restart and are re-adopted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel, Field, field_validator, model_validator

from ..machines import Lifecycle, Machine, Origin, launched_for
from .base import ALL_VERBS, LaunchRequest, Provider, ProviderError, ProviderOptions

if TYPE_CHECKING:
    from ..specs import ServiceSpec

log = structlog.get_logger("healerd.providers.local")
MARKER = "HEALERD_MACHINE_ID"
#: also in every machine's environment: which healerd (its state directory) launched it, and as what, so a
#: machine whose record was lost (a deleted or replaced state.db) is adopted again, never orphaned
OWNER = "HEALERD_STATE_DIR"


class LocalOptions(ProviderOptions):
    host: str = "127.0.0.1"
    port_range: tuple[int, int] = (20000, 29999)
    freeze_on_quarantine: bool = False  # SIGSTOP the process group while quarantined
    #: zones new machines are spread across (the image's command gets {zone}); a zone may listen on an address
    #: of its own (`hosts: {a: 127.0.1.1}`), else on `host`
    zones: list[str] = Field(default_factory=list)
    hosts: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _range(self) -> LocalOptions:
        lo, hi = self.port_range
        if not 1024 <= lo <= hi <= 65535:
            raise ValueError(f"port_range must be two ports between 1024 and 65535, low first; got {self.port_range}")
        if len(set(self.zones)) != len(self.zones) or not all(self.zones):
            raise ValueError(f"zones must be distinct non-empty names, got {self.zones}")
        stray = sorted(set(self.hosts) - set(self.zones))
        if stray:
            raise ValueError(f"hosts names zone(s) {', '.join(stray)} missing from zones {self.zones}: add them there")
        return self

    def host_of(self, zone: str) -> str:
        return self.hosts.get(zone, self.host)


class LocalImage(BaseModel):
    """An image version of the local provider: the command that starts a machine. Templates: {port} (given
    to the machine), {host}, {zone}, {id}, {service}, {python} (the interpreter healerd runs on). The machine's
    environment is `env` only (plus PATH), never the daemon's."""

    model_config = {"extra": "forbid", "frozen": True}
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("command")
    @classmethod
    def _port(cls, v: list[str]) -> list[str]:
        if not any("{port}" in a for a in v):
            raise ValueError("the command must take the port it is given: put {port} in an argument")
        return v


def _start_time(pid: int) -> str | None:
    """The process start time (clock ticks since boot): tells a live machine from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _environ_has(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _proc_info(pid: int) -> dict[str, str]:
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        info["cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        info["status"] = Path(f"/proc/{pid}/status").read_text()
    return info


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def find_owned(state_dir: str, service: str | None) -> dict[str, tuple[int, dict[str, str]]]:
    """Machine processes (process group leaders) launched by the healerd of `state_dir` for `service` (None:
    for any service)."""
    found: dict[str, tuple[int, dict[str, str]]] = {}
    needle = f"{OWNER}={state_dir}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if not _environ_has(pid, needle):
            continue
        env = _environ(pid)
        with contextlib.suppress(OSError):
            if service in (None, env.get("HEALERD_SERVICE")) and MARKER in env and os.getpgid(pid) == pid:
                found[env[MARKER]] = (pid, env)
    return found


def find_by_marker(machine_id: str) -> int | None:
    """The pid of the process launched for `machine_id`, found by its environment marker."""
    marker = f"{MARKER}={machine_id}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _environ_has(int(entry.name), marker):
            pid = int(entry.name)
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == pid:
                    return pid
    return None


class LocalProvider(Provider):
    kind = "local"
    Config = LocalOptions
    ImageVersion = LocalImage
    VERBS = ALL_VERBS  # restart and reboot start its process again

    @property
    def opts(self) -> LocalOptions:
        assert isinstance(self.options, LocalOptions)
        return self.options

    def log_path(self, machine_id: str) -> Path:
        assert self.env is not None
        return self.env.state_dir / "machines" / f"{machine_id}.log"

    async def list_machines(self, service: ServiceSpec) -> list[Machine]:
        """Machines of the service known to the store and not yet released or terminated (none without one),
        plus machines this healerd launched that are running but missing from the store: adopted on probation
        (their checks decide whether they serve), never left running unmanaged."""
        if self.env is None or self.env.store is None:
            return []
        stored = await self.env.store.machines.load(service.name)
        machines = [m for m in stored if m.lifecycle not in (Lifecycle.RELEASED, Lifecycle.TERMINATED)]
        known = {m.id for m in stored}
        owned = await asyncio.to_thread(find_owned, self._owner(), service.name)
        for machine_id, (pid, env) in sorted(owned.items()):
            if machine_id in known or _is_zombie(pid) or not env.get("HEALERD_ADDRESS"):
                continue
            address = env["HEALERD_ADDRESS"]
            attrs = {
                "port": address.rpartition(":")[2],
                "image": env.get("HEALERD_IMAGE", ""),
                "image_version": env.get("HEALERD_IMAGE_VERSION", ""),
                "launched_for": launched_for(Origin.FILL),
                "launched_at": str(time.time()),
                "adopted": "1",
                **({"zone": env["HEALERD_ZONE"]} if env.get("HEALERD_ZONE") else {}),
            }
            machine = self._with_pid(Machine(service.name, machine_id, address, Lifecycle.PROBATION, attrs), pid)
            log.warning(
                "adopted a running machine missing from the state store; it is on probation",
                service=service.name,
                machine=machine_id,
                pid=pid,
                address=address,
            )
            machines.append(machine)
        return machines

    def _owner(self) -> str:
        assert self.env is not None
        return str(self.env.state_dir.resolve())

    def _pick_port(self, taken: set[int], host: str) -> int:
        lo, hi = self.opts.port_range
        span = hi - lo + 1
        start = int(time.time() * 1000) % span
        for i in range(span):
            port = lo + (start + i) % span
            if port in taken:
                continue
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError as exc:
                    # a zone's address in another network namespace cannot be tried from here: `taken` decides
                    if exc.errno != errno.EADDRNOTAVAIL:
                        continue
            return port
        raise ProviderError(f"local: no free port in {lo}-{hi}; widen providers.<name>.port_range")

    def zones(self, service: ServiceSpec) -> tuple[str, ...]:
        return tuple(self.opts.zones)

    def allocate(self, taken: set[int], zone: str = "") -> tuple[str, dict[str, str]]:
        """The address and attributes a new machine will have (recorded before it starts)."""
        host = self.opts.host_of(zone)
        port = self._pick_port(taken, host)
        return f"{host}:{port}", {"port": str(port), **({"zone": zone} if zone else {})}

    async def launch(self, request: LaunchRequest) -> Machine:
        """Start the machine's process; if one is already running for this machine id, adopt it."""
        assert self.env is not None and self.env.store is not None
        machine = await self.env.store.machines.get(request.service, request.machine_id)
        if machine is None:
            raise ProviderError(f"local: machine {request.machine_id} was not recorded before launch")
        pid = await asyncio.to_thread(find_by_marker, request.machine_id)
        if pid is not None and not _is_zombie(pid):
            return self._with_pid(machine, pid)
        spec = request.spec
        assert isinstance(spec, LocalImage)
        port = machine.attributes.get("port", "")
        fields = {
            "port": port,
            "host": self.opts.host_of(machine.zone),
            "zone": machine.zone,
            "id": machine.id,
            "service": machine.service,
            "python": sys.executable,
        }
        argv = [a.format_map(fields) for a in spec.command]
        log_path = self.log_path(machine.id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Only what the image declares (plus PATH to find its programs): the daemon's own environment may hold
        # secrets, and a machine (a quarantined one too) is not to be trusted with them.
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            **spec.env,
            MARKER: machine.id,
            "HEALERD_SERVICE": machine.service,
            OWNER: self._owner(),
            "HEALERD_ADDRESS": machine.address,
            "HEALERD_IMAGE": request.image,
            "HEALERD_IMAGE_VERSION": request.version,
            **({"HEALERD_ZONE": machine.zone} if machine.zone else {}),
        }
        await asyncio.to_thread(self._remember, machine.id, argv, env)
        return await self._spawn(machine, argv, env)

    def _launch_path(self, machine_id: str) -> Path:
        return self.log_path(machine_id).with_suffix(".launch.json")

    def _remember(self, machine_id: str, argv: list[str], env: dict[str, str]) -> None:
        """How the machine was started, so that a restart starts it again the same way (owner-only file)."""
        path = self._launch_path(machine_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"argv": argv, "env": env}, f)

    async def _spawn(self, machine: Machine, argv: list[str], env: dict[str, str]) -> Machine:
        log_path = self.log_path(machine.id)
        with log_path.open("ab") as log:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ProviderError(f"local: cannot start {argv[0]} for {machine.id}: {exc.strerror or exc}") from None
        # The process outlives healerd; reap it if it exits while we run so it does not linger as a zombie.
        asyncio.get_running_loop().create_task(proc.wait())
        return self._with_pid(machine, proc.pid)

    async def restart(self, machine: Machine) -> Machine:
        """Stop the machine's process (a frozen one too) and start it again as it was launched: same id, same
        address."""
        try:
            launch = json.loads(await asyncio.to_thread(self._launch_path(machine.id).read_text))
        except (OSError, ValueError) as exc:
            raise ProviderError(
                f"local: cannot restart {machine.id}: how it was started is not known ({exc})"
            ) from None
        await self.terminate(machine)
        return await self._spawn(machine, list(launch["argv"]), dict(launch["env"]))

    async def reboot(self, machine: Machine) -> Machine:
        """A local machine is a process: rebooting it is restarting it."""
        return await self.restart(machine)

    def _with_pid(self, machine: Machine, pid: int) -> Machine:
        attrs = {
            **machine.attributes,
            "pid": str(pid),
            "start_time": _start_time(pid) or "",
            "log": str(self.log_path(machine.id)),
        }
        return Machine(machine.service, machine.id, machine.address, machine.lifecycle, attrs)

    def _pid(self, machine: Machine) -> int | None:
        """The live process of the machine, or None (never a pid reused by another process)."""
        pid_text = machine.attributes.get("pid")
        if not pid_text:
            return None
        pid = int(pid_text)
        st = _start_time(pid)
        if st is None or st != machine.attributes.get("start_time") or _is_zombie(pid):
            return None
        return pid

    async def alive(self, machine: Machine) -> bool:
        return self._pid(machine) is not None

    async def quarantine(self, machine: Machine, incident: str | None, freeze: bool = False) -> dict[str, Any]:
        pid = self._pid(machine)
        frozen = False
        if pid is not None and (freeze or self.opts.freeze_on_quarantine):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGSTOP)
                frozen = True
        return {"pid": pid, "alive": pid is not None, "frozen": frozen}

    async def release(self, machine: Machine) -> None:
        pid = self._pid(machine)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)

    async def terminate(self, machine: Machine) -> None:
        pid = self._pid(machine)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGCONT)
            os.killpg(pid, signal.SIGTERM)
        for _ in range(50):
            if self._pid(machine) is None:
                return
            await asyncio.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)

    async def describe(self, machine: Machine) -> dict[str, Any]:
        pid = self._pid(machine)
        info: dict[str, Any] = {
            "id": machine.id,
            "service": machine.service,
            "address": machine.address,
            "lifecycle": machine.lifecycle.value,
            "attributes": machine.attributes,
            "alive": pid is not None,
        }
        if pid is not None:
            info.update(await asyncio.to_thread(_proc_info, pid))
        return info

    async def console(self, machine: Machine, limit: int = 1 << 20) -> str:
        path = self.log_path(machine.id)

        def tail() -> str:
            try:
                with path.open("rb") as f:
                    f.seek(0, os.SEEK_END)
                    size = f.tell()
                    f.seek(max(0, size - limit))
                    return f.read().decode("utf-8", "replace")
            except FileNotFoundError:
                return ""

        return await asyncio.to_thread(tail)
