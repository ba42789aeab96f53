"""What the API, the CLI and the status page show of remediation: incidents with their timeline, and the
mode and counts of the engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .incidents import Incident, IncidentBook, IncidentState
from .ladder import RUNG_STEPS

if TYPE_CHECKING:
    from ..config import Config
    from ..store import BaseStore
    from .controls import Controls
    from .runbook import StepJournal


def timeline(incident: str, events: list[dict[str, Any]], steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The incident's events and its steps' starts and ends, in time order."""
    out: list[dict[str, Any]] = [
        {"timestamp": e["timestamp"], "kind": "event", "type": e["type"], "summary": e["summary"]}
        for e in events
        if e["incident"] == incident
    ]
    for s in steps:
        rung, step = divmod(s["index"], RUNG_STEPS)
        label = f"rung {rung + 1} step {step + 1}" if rung else f"step {step + 1}"
        out.append(
            {
                "timestamp": s["started_at"],
                "kind": "step",
                "type": f"step.{s['action']}",
                "summary": f"{label} {s['action']} started (attempt {s['attempts']})",
            }
        )
        if s["ended_at"]:
            out.append(
                {
                    "timestamp": s["ended_at"],
                    "kind": "step",
                    "type": f"step.{s['action']}",
                    "summary": f"{label} {s['action']} {s['state']}"
                    + (f": {s['error']}" if s["error"] else "")
                    + (f"; provider stderr: {said}" if (said := _said(s)) else ""),
                }
            )
    out.sort(key=lambda t: t["timestamp"] or 0)
    return out


def _said(step: dict[str, Any]) -> str:
    """The provider's stderr a step kept, its last lines, for the timeline (the whole of it is in the step)."""
    said = str((step.get("outputs") or {}).get("provider_said", ""))
    lines = [line for line in said.splitlines() if line.strip() and not line.startswith("--- provider")]
    return " / ".join(lines[-3:])[-300:]


class Views:
    def __init__(
        self,
        config: Callable[[], Config],
        store: BaseStore,
        *,
        journal: StepJournal,
        controls: Controls,
        incidents: IncidentBook,
    ) -> None:
        self._config = config
        self.store = store
        self.journal = journal
        self.controls = controls
        self.incidents = incidents

    @property
    def config(self) -> Config:
        return self._config()

    async def incident_list(self, limit: int = 100, state: str | None = None) -> list[dict[str, Any]]:
        return [Incident.from_record(r).as_dict() for r in await self.store.incidents.recent(limit, state)]

    async def incident_view(self, incident_id: str) -> dict[str, Any] | None:
        row = await self.store.incidents.get(incident_id)
        if row is None:
            return None
        inc = Incident.from_record(row)
        steps = list((await self.journal.steps(inc.id)).values())
        events = await self.store.events.recent(limit=1000)
        return {**inc.as_dict(), "steps": steps, "timeline": timeline(inc.id, events, steps)}

    def why_not_acting(self, service: str, now: float) -> dict[str, Any]:
        """Why healerd is not remediating the service's incidents: each held one with its gate, the gate's
        figures, since when and what to do; and the storm cooldown running, with its time left."""
        held = [
            {"incident": inc.id, "machine": inc.machine, **h}
            for inc in self.incidents.of(service)
            if (h := inc.held) is not None
        ]
        until = self.controls.storm_until.get(service, 0.0)
        storm = (
            {"until": until, "seconds_left": round(until - now, 1), "what_to_do": f"healerd storm clear {service}"}
            if until > now
            else None
        )
        return {"held": held, "storm_cooldown": storm}

    def status(self) -> dict[str, Any]:
        active = self.incidents.active.values()
        return {
            "mode": self.controls.global_mode.value,
            "paused": self.controls.paused,
            "changed": self.controls.last_change,  # {"what", "by", "at"}: the last change of mode or pause
            "service_modes": {name: self.controls.mode_for(name).value for name in self.config.services},
            "incidents_open": len(active),
            "remediating": sum(1 for i in active if i.state is IncidentState.REMEDIATING),
        }
