"""What the API and the CLI read of images and their versions: from the store, so any node of a cluster shows them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Config
    from ..store import BaseStore


async def images_view(config: Config, store: BaseStore) -> dict[str, Any]:
    """GET /api/v1/images: every image's versions, with the state the store holds and the known-good one."""
    records: dict[tuple[str, str], Any] = {(v.family, v.version): v for v in await store.images.versions()}
    images = []
    for name, image in config.images.items():
        stored = await store.images.get(name)
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
