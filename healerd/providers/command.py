"""`command` provider: machines come from an executable the operator writes (libvirt, Proxmox, GCP, bare
metal...), run once per call as `COMMAND... VERB` with one JSON request on stdin and one JSON reply on stdout.

Calls take the exec checks' spawn path (posix_spawn, the executable's own process group, killed whole when it
exits or times out). The env_file's values reach only the executable's environment: they are cut out of
everything healerd logs, keeps or reports. The protocol itself is in `command_protocol` and docs/providers.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel
from structlog.contextvars import bound_contextvars

from ..checks import _spawn
from ..machines import Lifecycle, Machine, Origin, launched_for
from .base import ALL_VERBS, LaunchRequest, Provider, ProviderEnv, ProviderError, ProviderUnsupported
from .command_protocol import (
    EXIT_UNSUPPORTED,
    CommandImage,
    CommandOptions,
    ReplyError,
    field_of,
    machine_from,
    machine_json,
    read_env_file,
    request,
)

if TYPE_CHECKING:
    from ..specs import ServiceSpec

log = structlog.get_logger("healerd.providers.command")
#: a reply larger than this is refused (a reply is one object: a list of machines, a console's tail)
REPLY_CAP = 4 << 20
#: stderr kept of one call (logged, kept for the machine's console)
STDERR_CAP = 64 << 10
#: stderr quoted in an error message
STDERR_QUOTED = 500
#: after a timeout: SIGTERM to the executable's process group, SIGKILL this much later
KILL_GRACE = 2.0
#: the calls whose stderr is kept per machine, and for how many machines
KEPT_CALLS = 4
KEPT_MACHINES = 512
#: an env_file value shorter than this is not cut out of output (it would cut ordinary words)
SECRET_MIN = 4


@dataclass(frozen=True, slots=True)
class Call:
    """One call as kept for a machine's console: the verb, when, how it ended, its stderr."""

    verb: str
    at: float
    seconds: float
    outcome: str
    stderr: str

    def render(self) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at))
        head = f"--- provider {self.verb} at {when} ({self.seconds:.2f}s, {self.outcome}) stderr ---"
        return f"{head}\n{self.stderr.rstrip()}\n" if self.stderr.strip() else f"{head}\n(none)\n"


class CommandProvider(Provider):
    kind = "command"
    Config = CommandOptions
    ImageVersion = CommandImage
    VERBS = ALL_VERBS

    @classmethod
    def verbs_for(cls, options: BaseModel) -> frozenset[str]:
        """The verbs the executable claims (`verbs`), or every verb of the protocol."""
        declared = getattr(options, "verbs", None)
        return frozenset(declared) if declared else cls.VERBS

    def __init__(self, name: str, options: BaseModel, *, env: ProviderEnv | None = None) -> None:
        super().__init__(name, options, env=env)
        self._unsupported: set[str] = set()  # verbs the executable answered with exit 3
        self._calls: OrderedDict[str, deque[Call]] = OrderedDict()
        self._secrets: tuple[float, dict[str, str]] | None = None  # (the env_file's mtime, its values)

    @property
    def opts(self) -> CommandOptions:
        assert isinstance(self.options, CommandOptions)
        return self.options

    @property
    def executable(self) -> str:
        return self.opts.command[0]

    def supports(self, verb: str) -> bool:
        declared = self.opts.verbs
        return verb in ALL_VERBS and (declared is None or verb in declared) and verb not in self._unsupported

    # -- one call -------------------------------------------------------------------------------------------
    async def call(
        self, verb: str, service: str, *, subject: str | None = None, incident: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Run the executable for `verb` with the request `fields` and return its reply; `subject` is the machine
        the call is about. ProviderUnsupported for exit 3 (or a verb it does not claim), ProviderError for any
        other failure, naming the executable, the verb and why."""
        if not self.supports(verb):
            raise ProviderUnsupported(f"provider {self.name}: {self.executable} does not support {verb}")
        timeout = self.opts.launch_timeout if verb == "launch" else self.opts.timeout
        body = request(verb, self.name, service, time.time() + timeout, **fields)
        if incident is not None:
            body.setdefault("incident", incident)
        binds = {"service": service, "machine": subject, "incident": incident}
        with bound_contextvars(**{k: v for k, v in binds.items() if v is not None}):
            return await self._run(verb, subject, timeout, json.dumps(body, default=str).encode())

    async def _run(self, verb: str, subject: str | None, timeout: float, body: bytes) -> dict[str, Any]:
        secrets = self._secret_values()
        program = shutil.which(self.executable) or self.executable
        argv = [program, *self.opts.command[1:], verb]
        env = {**os.environ, **secrets}
        errors = bytearray()
        started = time.monotonic()
        outcome: _spawn.Outcome | None = None
        reason = ""
        try:
            async with asyncio.timeout(timeout):
                outcome = await _start(program, argv, env, body, errors)
        except TimeoutError:
            reason = f"timed out after {timeout:g}s (its process group was killed)"
        except OSError as exc:
            reason = f"cannot be started: {exc.strerror or exc}"
        seconds = time.monotonic() - started
        stderr = self._redact(errors.decode("utf-8", "replace"), secrets)
        if outcome is not None:
            reason = _exit_reason(outcome.code)
        self._keep(subject, Call(verb, time.time(), seconds, reason or "exit 0", stderr))
        log.debug("provider call", provider=self.name, verb=verb, seconds=round(seconds, 3), outcome=reason or "ok")
        if stderr.strip():
            log.info("provider stderr", provider=self.name, verb=verb, stderr=stderr[:STDERR_CAP])
        if outcome is not None and outcome.code == EXIT_UNSUPPORTED:
            if verb not in self._unsupported:
                log.warning("provider verb not supported", provider=self.name, verb=verb)
            self._unsupported.add(verb)
            raise ProviderUnsupported(f"provider {self.name}: {self.executable} {verb}: not supported (exit 3)")
        if outcome is None or outcome.code != 0:
            raise self._error(verb, reason, stderr)
        if outcome.truncated:
            raise self._error(verb, f"its reply is larger than {REPLY_CAP >> 20} MiB", stderr)
        try:
            reply = json.loads(outcome.output)
        except ValueError:
            shown = self._redact(outcome.output[:120].decode("utf-8", "replace"), secrets)
            raise self._error(verb, f"its stdout is not one JSON object: {shown!r}", stderr) from None
        if not isinstance(reply, dict):
            raise self._error(verb, f"its stdout is JSON but not an object: {type(reply).__name__}", stderr)
        return reply

    def _error(self, verb: str, reason: str, stderr: str) -> ProviderError:
        quoted = stderr.strip()[:STDERR_QUOTED]
        tail = f"; stderr: {quoted}" if quoted else "; it wrote nothing on stderr"
        return ProviderError(f"provider {self.name}: {self.executable} {verb}: {reason}{tail}")

    def _reply_error(self, verb: str, exc: ReplyError) -> ProviderError:
        return ProviderError(f"provider {self.name}: {self.executable} {verb}: {exc}")

    def _secret_values(self) -> dict[str, str]:
        """The env_file's values, read again when the file changes (a rotated secret needs no reload)."""
        path = self.opts.env_file
        if path is None:
            return {}
        try:
            mtime = path.stat().st_mtime
        except OSError as exc:
            raise ProviderError(f"provider {self.name}: cannot read env_file {path}: {exc.strerror}") from None
        if self._secrets is None or self._secrets[0] != mtime:
            try:
                self._secrets = (mtime, read_env_file(path))
            except ValueError as exc:
                raise ProviderError(f"provider {self.name}: {exc}") from None
        return self._secrets[1]

    @staticmethod
    def _redact(text: str, secrets: Mapping[str, str]) -> str:
        for value in secrets.values():
            if len(value) >= SECRET_MIN:
                text = text.replace(value, "[secret]")
        return text

    def _keep(self, machine: str | None, call: Call) -> None:
        if machine is None:
            return
        calls = self._calls.pop(machine, None) or deque(maxlen=KEPT_CALLS)
        calls.append(call)
        self._calls[machine] = calls
        while len(self._calls) > KEPT_MACHINES:
            self._calls.popitem(last=False)

    def said(self, machine_id: str, since: float) -> str:
        """The stderr of this machine's calls since `since` (its verbs, each with how it ended)."""
        calls = [c for c in self._calls.get(machine_id, ()) if c.at >= since and c.stderr.strip()]
        return "".join(call.render() for call in calls)

    def kept_stderr(self, machine_id: str) -> str:
        """The stderr of the last calls for this machine, oldest first (for its console and evidence)."""
        return "".join(call.render() for call in self._calls.get(machine_id, ()))

    async def _on(self, verb: str, machine: Machine, incident: str | None = None, **fields: Any) -> dict[str, Any]:
        """A verb about one machine: its request carries the machine."""
        return await self.call(
            verb,
            machine.service,
            subject=machine.id,
            incident=incident or machine.incident,
            machine=machine_json(machine),
            **fields,
        )

    # -- the verbs ------------------------------------------------------------------------------------------
    async def list_machines(self, service: ServiceSpec) -> list[Machine]:
        """What the executable lists, joined with what healerd records: healerd's lifecycle (probation,
        quarantined) wins; a listed machine healerd has no record of is adopted on probation (its checks decide
        whether it serves), never left running unmanaged."""
        reply = await self.call("list", service.name)
        try:
            raw = field_of(reply, "machines", list, "a list of machines")
            listed = {
                m.id: m
                for i, item in enumerate(raw)
                if (m := machine_from(item, service.name, Lifecycle.PROBATION, f"machines[{i}]"))
            }
        except ReplyError as exc:
            raise self._reply_error("list", exc) from None
        stored = [] if self.env is None or self.env.store is None else await self.env.store.machines.load(service.name)
        out: dict[str, Machine] = {}
        for m in stored:
            if m.lifecycle in (Lifecycle.RELEASED, Lifecycle.TERMINATED):
                continue
            found = listed.get(m.id)
            if found is None:
                out[m.id] = m
            else:
                out[m.id] = Machine(
                    m.service, m.id, found.address or m.address, m.lifecycle, {**found.attributes, **m.attributes}
                )
        known = {m.id for m in stored}
        for mid, found in listed.items():
            if mid in known:
                continue
            attrs = {**found.attributes, "launched_for": launched_for(Origin.FILL), "adopted": "1"}
            attrs.setdefault("launched_at", str(time.time()))
            out[mid] = Machine(found.service, mid, found.address, Lifecycle.PROBATION, attrs)
            if self.env is not None and self.env.store is not None:
                log.warning(
                    "adopted a listed machine healerd has no record of; it is on probation",
                    service=service.name,
                    machine=mid,
                    address=found.address,
                )
        return list(out.values())

    def zones(self, service: ServiceSpec) -> tuple[str, ...]:
        return tuple(self.opts.zones)

    async def launch(self, request: LaunchRequest) -> Machine:
        """Launch (or find again: `machine_id` is the idempotency key) the machine healerd recorded."""
        spec = request.spec.model_dump(mode="json")
        reply = await self.call(
            "launch",
            request.service,
            subject=request.machine_id,
            incident=request.incident,
            machine_id=request.machine_id,
            image=request.image,
            version=request.version,
            spec=spec,
            **({"zone": request.zone} if request.zone else {}),
        )
        try:
            return machine_from(reply.get("machine"), request.service, Lifecycle.PROBATION)
        except ReplyError as exc:
            raise self._reply_error("launch", exc) from None

    async def quarantine(self, machine: Machine, incident: str | None, freeze: bool = False) -> dict[str, Any]:
        if not self.supports("quarantine"):
            return {}
        try:
            reply = await self._on("quarantine", machine, incident, freeze=freeze)
        except ProviderUnsupported:
            return {}
        evidence = reply.get("evidence", {})
        if not isinstance(evidence, dict):
            raise self._reply_error("quarantine", ReplyError("'evidence' must be an object"))
        return evidence

    async def release(self, machine: Machine) -> None:
        if self.supports("release"):
            with contextlib.suppress(ProviderUnsupported):
                await self._on("release", machine)

    async def terminate(self, machine: Machine) -> None:
        await self._on("terminate", machine)

    async def restart(self, machine: Machine) -> Machine:
        await self._on("restart", machine)
        return machine

    async def reboot(self, machine: Machine) -> Machine:
        await self._on("reboot", machine)
        return machine

    async def alive(self, machine: Machine) -> bool:
        if not self.supports("alive"):
            return True
        try:
            reply = await self._on("alive", machine)
        except ProviderUnsupported:
            return True
        try:
            return bool(field_of(reply, "alive", bool, "true or false"))
        except ReplyError as exc:
            raise self._reply_error("alive", exc) from None

    async def describe(self, machine: Machine) -> dict[str, Any]:
        """What the executable says about the machine, for the evidence bundle (a failure is said there too)."""
        if self.supports("describe"):
            try:
                return await self._on("describe", machine)
            except ProviderUnsupported:
                pass
            except ProviderError as exc:
                return {**await super().describe(machine), "error": str(exc)}
        return await super().describe(machine)

    async def console(self, machine: Machine, limit: int = 1 << 20) -> str:
        """The executable's console text (or why there is none), then the stderr of the last calls for the
        machine: the evidence bundle gets what there is."""
        text = ""
        if self.supports("console"):
            try:
                reply = await self._on("console", machine, limit=limit)
                text = str(field_of(reply, "text", str, "the console's text"))
            except ProviderUnsupported:
                text = ""
            except ReplyError as exc:
                text = f"(no console: {self._reply_error('console', exc)})"
            except ProviderError as exc:
                text = f"(no console: {exc})"
        out = text + ("\n" if text and not text.endswith("\n") else "") + self.kept_stderr(machine.id)
        return out[-limit:] if len(out) > limit else out


async def _start(program: str, argv: list[str], env: dict[str, str], body: bytes, errors: bytearray) -> _spawn.Outcome:
    return await _spawn.spawn(
        program, argv, env, REPLY_CAP, stdin=body, errors=errors, errors_cap=STDERR_CAP, grace=KILL_GRACE
    )


def _exit_reason(code: int) -> str:
    if code == 0:
        return ""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited {code}"
