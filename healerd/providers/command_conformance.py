"""Does an executable speak the `command` provider's protocol? Run every verb on one test machine for real, in
the order healerd uses them, and say verb by verb what was wrong and how to fix it (`healerd provider test`)."""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..machines import Machine
from .base import LaunchRequest, ProviderError, ProviderUnsupported
from .command import CommandProvider
from .command_protocol import ReplyError, field_of

if TYPE_CHECKING:
    from ..specs import MachineEntry, ServiceSpec

#: verbs healerd can do without (the escalation ladder's steps): unsupported is not a failure
OPTIONAL = frozenset({"restart", "reboot"})


class Result(enum.StrEnum):
    OK = "ok"
    FAIL = "FAIL"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Row:
    step: str  # the verb, and when it is asked twice, which time
    result: Result
    seconds: float
    problem: str = ""

    @property
    def failed(self) -> bool:
        return self.result is Result.FAIL or (
            self.result is Result.UNSUPPORTED and self.step.split()[0] not in OPTIONAL
        )


def fix_for(message: str, provider: CommandProvider, verb: str) -> str:
    """How to fix the failure `message` says."""
    if "timed out" in message:
        limit = "launch_timeout" if verb == "launch" else "timeout"
        return f"answer within providers.{provider.name}.{limit}, or raise it"
    if "not one JSON object" in message or "JSON but not an object" in message:
        return "print exactly one JSON object on stdout; write logs on stderr"
    if "exited" in message or "killed by" in message:
        return "exit 0 once the verb is done; its stderr says what went wrong"
    if "cannot be started" in message:
        return f"check providers.{provider.name}.command"
    return f"reply to {verb} as docs/providers.md shows"


class Conformance:
    """The run of one test: the provider, the test machine's request, and the rows so far."""

    def __init__(self, provider: CommandProvider, service: ServiceSpec, *, launch: LaunchRequest) -> None:
        self.provider = provider
        self.spec = service
        self.service = service.name
        self.request = launch
        self.rows: list[Row] = []
        self.machine: Machine | None = None

    async def step(self, step: str, action: Callable[[], Awaitable[str | None]]) -> bool:
        """Run `action` (it returns what is wrong, or None) and record its row; True when it passed."""
        verb = step.split()[0]
        started = time.monotonic()
        try:
            problem = await action()
        except ProviderUnsupported:
            seconds = time.monotonic() - started
            why = "" if verb in OPTIONAL else f"exit 3 (unsupported), but healerd needs {verb}: implement it"
            self.rows.append(Row(step, Result.UNSUPPORTED, seconds, why))
            return verb in OPTIONAL
        except ProviderError as exc:
            seconds = time.monotonic() - started
            self.rows.append(Row(step, Result.FAIL, seconds, f"{exc} -> {fix_for(str(exc), self.provider, verb)}"))
            return False
        seconds = time.monotonic() - started
        self.rows.append(Row(step, Result.FAIL if problem else Result.OK, seconds, problem or ""))
        return not problem

    def skipped(self, *steps: str) -> None:
        for step in steps:
            self.rows.append(Row(step, Result.FAIL, 0.0, "not run: the launch failed"))

    async def run(self) -> list[Row]:
        p = self.provider
        await self.step("list", self._list)
        if not await self.step("launch", self._launch):
            self.skipped("launch again", "describe", "console", "alive", "quarantine", "release", "terminate")
            return self.rows
        try:
            await self.step("launch again", self._launch_again)
            await self.step("list again", self._listed)
            await self.step("describe", lambda: self._object("describe"))
            await self.step("console", self._console)
            await self.step("alive", lambda: self._alive(True))
            await self.step("quarantine", self._quarantine)
            await self.step("release", lambda: self._object("release"))
            if await self.step("restart", lambda: self._object("restart")) and p.supports("restart"):
                await self.step("alive after restart", lambda: self._alive(True))
            await self.step("reboot", lambda: self._object("reboot"))
        finally:
            await self.step("terminate", lambda: self._object("terminate"))
        await self.step("terminate again", lambda: self._object("terminate"))
        await self.step("alive after terminate", lambda: self._alive(False))
        return self.rows

    # -- the steps: each returns what is wrong, or None -------------------------------------------------------
    def _on(self, verb: str, **fields: Any) -> Awaitable[dict[str, Any]]:
        assert self.machine is not None
        m = self.machine
        body = {"id": m.id, "address": m.address, "attributes": m.attributes}
        return self.provider.call(verb, self.service, subject=m.id, machine=body, **fields)

    async def _list(self) -> str | None:
        await self.provider.list_machines(self.spec)
        return None

    async def _launch(self) -> str | None:
        self.machine = await self.provider.launch(self.request)
        return None

    async def _launch_again(self) -> str | None:
        again = await self.provider.launch(self.request)
        first = self.machine
        assert first is not None
        if (again.id, again.address) != (first.id, first.address):
            return (
                f"the second launch of {self.request.machine_id} returned {again.id} at {again.address}, the first "
                f"{first.id} at {first.address} -> find the machine started for machine_id (the idempotency key) "
                "and return it instead of starting another; terminate the extra one by hand"
            )
        return None

    async def _listed(self) -> str | None:
        assert self.machine is not None
        listed = await self.provider.list_machines(self.spec)
        if self.machine.id not in {m.id for m in listed}:
            return f"list does not include {self.machine.id}, just launched -> list every machine of the service"
        return None

    async def _object(self, verb: str) -> str | None:
        await self._on(verb)
        return None

    async def _console(self) -> str | None:
        reply = await self._on("console", limit=65536)
        try:
            field_of(reply, "text", str, "the console's text")
        except ReplyError as exc:
            return f'{exc} -> reply {{"text": "..."}} (an empty string when there is no console)'
        return None

    async def _alive(self, expected: bool) -> str | None:
        reply = await self._on("alive")
        try:
            alive = field_of(reply, "alive", bool, "true or false")
        except ReplyError as exc:
            return f'{exc} -> reply {{"alive": true}} or {{"alive": false}}'
        if alive is not expected:
            state = "running" if expected else "terminated"
            return f"alive answered {str(alive).lower()} for a machine that was just {state}"
        return None

    async def _quarantine(self) -> str | None:
        reply = await self._on("quarantine", incident="provider-test", freeze=False)
        if not isinstance(reply.get("evidence", {}), dict):
            return "'evidence' must be an object -> reply {\"evidence\": {...what was isolated, snapshot ids}}"
        return None


@dataclass(frozen=True)
class NamedService:
    """A service known by its name only (a provider's test runs without one configured)."""

    name: str
    machines: Sequence[MachineEntry] = ()
    discovery: Mapping[str, Any] | None = None
