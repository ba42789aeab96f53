"""What the API and the CLI read of rollouts and images: from the store, so any node of a cluster shows them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .record import Rollout, rollout_view

if TYPE_CHECKING:
    from ..config import Config
    from ..monitor import Monitor
    from ..store import BaseStore


class RolloutViews:
    """The views part of `Rollouts`."""

    config: Config
    monitor: Monitor
    store: BaseStore
    active: dict[str, Rollout]

    async def view(self, service: str) -> dict[str, Any] | None:
        r = self.active.get(service)
        record = r.record() if r is not None else await self.store.rollouts.latest(service)
        return rollout_view(record, self.monitor) if record is not None else None

    async def images_view(self) -> dict[str, Any]:
        records: dict[tuple[str, str], Any] = {(v.family, v.version): v for v in await self.store.images.versions()}
        images = []
        for name, image in self.config.images.items():
            stored = await self.store.images.get(name)
            known_good = stored.known_good if stored and stored.known_good in image.versions else image.known_good
            versions = []
            for version in image.versions:
                rec = records.get((name, version))
                state = "known_good" if version == known_good else (rec.state if rec else "available")
                if state == "known_good" and version != known_good:
                    state = "retired"
                versions.append(
                    {
                        "version": version,
                        "state": state,
                        "reason": rec.reason if rec else "",
                        "by": rec.promoted_by if rec else "",
                        "updated_at": rec.updated_at if rec else None,
                        "evidence": rec.evidence if rec else {},
                    }
                )
            images.append(
                {
                    "name": name,
                    "provider": image.provider,
                    "known_good": known_good,
                    "seeded": image.known_good,
                    "versions": versions,
                }
            )
        return {"images": images}
