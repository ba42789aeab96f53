"""The operator's controls over remediation: the mode, the global pause, silences (maintenance windows)
and the storm cooldowns after a max_unhealthy short-circuit. Runtime switches persist in the store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from ..config import Config, Mode
from ..events import new_id
from ..store import STORE_FAULTS

if TYPE_CHECKING:
    from ..store import BaseStore

log = structlog.get_logger("healerd.remediation")


def covers(silences: list[dict[str, Any]], service: str, machine: str) -> bool:
    """True when one of the silences covers this machine ("" for the service as a whole)."""
    return any((s["service"] in (None, service)) and (s["machine"] in (None, machine)) for s in silences)


class Controls:
    """Mode precedence, highest first: a per-service switch at run time, the global switch at run time,
    `healerd run --mode`, the service's `remediation.mode`, `daemon.mode`."""

    def __init__(
        self, config: Callable[[], Config], store: BaseStore, *, cli_mode: Mode | None, wake: Callable[[], None]
    ) -> None:
        self._config = config
        self.store = store
        self.cli_mode = cli_mode
        self.wake = wake  # a switch changed: the engine looks again now
        self.runtime_mode: Mode | None = None
        self.service_modes: dict[str, Mode] = {}
        self.paused = False
        self.last_change: dict[str, Any] | None = None  # who changed the mode or the pause last
        self.storm_until: dict[str, float] = {}
        self._silences: tuple[float, list[dict[str, Any]]] | None = None  # the last `now` asked, and its answer
        #: silence changes that apply but that the store could not write yet (a full disk)
        self._unsaved_adds: dict[str, dict[str, Any]] = {}
        self._unsaved_deletes: set[str] = set()
        self._saving: asyncio.Task[None] | None = None
        store.on_fault(self._store_fault)

    @property
    def config(self) -> Config:
        return self._config()

    async def load(self) -> None:
        mode = await self.store.meta.get("mode")
        self.runtime_mode = Mode(mode) if mode else None
        self.paused = (await self.store.meta.get("paused")) == "1"
        modes = await self.store.meta.get("service_modes")
        self.service_modes = {k: Mode(v) for k, v in json.loads(modes).items()} if modes else {}
        changed = await self.store.meta.get("mode_changed")
        self.last_change = json.loads(changed) if changed else None
        storms = await self.store.meta.get("storm_until")
        self.storm_until = {k: float(v) for k, v in json.loads(storms).items()} if storms else {}

    # -- mode and pause -------------------------------------------------------------------------------------
    @property
    def global_mode(self) -> Mode:
        """The mode of a service without a mode of its own."""
        return self.runtime_mode or self.cli_mode or self.config.daemon.mode

    def mode_for(self, service: str) -> Mode:
        if service in self.service_modes:
            return self.service_modes[service]
        if self.runtime_mode is not None:
            return self.runtime_mode
        if self.cli_mode is not None:
            return self.cli_mode
        svc = self.config.services.get(service)
        if svc is not None and svc.remediation.mode is not None:
            return svc.remediation.mode
        return self.config.daemon.mode

    async def record_change(self, what: str, by: str, now: float) -> None:
        """Who changed the mode or the pause last, and what (the page and `healerd status` say it)."""
        self.last_change = {"what": what, "by": by, "at": now}
        await self.store.meta.set("mode_changed", json.dumps(self.last_change))

    async def set_mode(self, mode: Mode | None, service: str | None = None) -> None:
        if service is None:
            self.runtime_mode = mode
            self.service_modes.clear()
            await self.store.meta.set("mode", mode.value if mode else "")
        elif mode is None:
            self.service_modes.pop(service, None)
        else:
            self.service_modes[service] = mode
        await self.store.meta.set("service_modes", json.dumps({k: v.value for k, v in self.service_modes.items()}))
        log.info("mode changed", mode=mode.value if mode else "config", service=service or "all")
        self.wake()

    async def set_paused(self, paused: bool) -> None:
        self.paused = paused
        await self.store.meta.set("paused", "1" if paused else "0")
        log.info("remediation paused" if paused else "remediation resumed")
        self.wake()

    # -- silences -------------------------------------------------------------------------------------------
    async def add_silence(
        self, service: str | None, machine: str | None, duration: float, comment: str, created_by: str = ""
    ) -> dict[str, Any]:
        """The new silence, with `saved`: False when the store could not write it (a full disk): it applies
        now all the same, and is written as soon as the store works again (a restart before that loses it)."""
        now = time.time()
        row: dict[str, Any] = {
            "id": new_id(now),
            "service": service,
            "machine": machine,
            "starts_at": now,
            "ends_at": now + duration,
            "comment": comment,
            "created_by": created_by,
        }
        self._silences = None
        if self.unsaved:
            await self._save_unsaved()
        try:
            await self._write_add(row)
        except STORE_FAULTS:
            self._unsaved_adds[row["id"]] = row
            log.warning("silence kept in memory: the state store cannot save it now", silence=row["id"])
            return {**row, "saved": False}
        return {**row, "saved": True}

    async def delete_silence(self, sid: str) -> bool:
        self._silences = None
        self.wake()
        if self._unsaved_adds.pop(sid, None) is not None:
            return True
        try:
            return await self.store.silences.delete(sid)
        except STORE_FAULTS:
            if not any(s["id"] == sid for s in await self.store.silences.active(time.time())):
                return False
            self._unsaved_deletes.add(sid)
            log.warning("silence ended in memory: the state store cannot save it now", silence=sid)
            return True

    async def silences(self, now: float | None = None) -> list[dict[str, Any]]:
        """Those running or to come: the stored ones and those waiting to be saved (written first if it can)."""
        now = time.time() if now is None else now
        if self._unsaved_adds or self._unsaved_deletes:
            await self._save_unsaved()
        stored = [s for s in await self.store.silences.active(now) if s["id"] not in self._unsaved_deletes]
        return stored + [s for s in self._unsaved_adds.values() if s["ends_at"] > now]

    @property
    def unsaved(self) -> int:
        """Silence changes that apply but wait for the store."""
        return len(self._unsaved_adds) + len(self._unsaved_deletes)

    async def _write_add(self, s: dict[str, Any]) -> None:
        await self.store.silences.add(
            s["id"], s["service"], s["machine"], s["starts_at"], s["ends_at"], s["comment"], s["created_by"]
        )

    def _store_fault(self, reason: str | None) -> None:
        """The store works again: write what waits for it now, not at the next look at the silences."""
        if reason is None and self.unsaved and (self._saving is None or self._saving.done()):
            self._saving = asyncio.get_running_loop().create_task(self._save_unsaved(), name="healerd-silences-save")

    async def _save_unsaved(self) -> None:
        with contextlib.suppress(*STORE_FAULTS):  # kept for the next time: the store said it fails
            for sid, row in list(self._unsaved_adds.items()):
                await self._write_add(row)
                del self._unsaved_adds[sid]
            for sid in list(self._unsaved_deletes):
                await self.store.silences.delete(sid)
                self._unsaved_deletes.discard(sid)
            log.info("silence changes kept in memory are saved")

    async def silenced(self, service: str, machine: str, now: float) -> bool:
        """Whether a silence covers the machine ("" for the whole service) at `now`; read once per `now`, so
        every reconciler of one pass sees the same silences."""
        if self._silences is None or self._silences[0] != now:
            self._silences = (now, await self.silences(now))
        return covers(self._silences[1], service, machine)

    # -- storm cooldown -------------------------------------------------------------------------------------
    async def clear_storm(self, service: str, now: float) -> float:
        """End the service's storm cooldown now; returns the seconds it had left (0: none was running). It
        applies even if the store cannot save it (a restart would bring the cooldown back)."""
        until = self.storm_until.pop(service, 0.0)
        self.wake()
        if until:
            await self.store.meta.set("storm_until", json.dumps(self.storm_until))
        return max(0.0, until - now)

    async def storm(self, service: str, until: float) -> None:
        """Start or extend a storm cooldown; persisted, so a restart makes the same decisions."""
        before = self.storm_until.get(service, 0.0)
        self.storm_until[service] = max(before, until)
        if until - before >= 1.0:  # extended by a reconcile tick or more: worth a write
            await self.store.meta.set("storm_until", json.dumps(self.storm_until))
