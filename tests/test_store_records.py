"""The small durable records: known-good images, silences and meta values."""

from __future__ import annotations

from pathlib import Path

from healerd.store import KnownGood, Store


async def test_known_good_images_round_trip_and_are_replaced(store: Store) -> None:
    assert await store.images.get("demo-web") is None
    await store.images.save("demo-web", "v1", "v1", 1.0)
    await store.images.save("demo-web", "v2", "v1", 2.0)
    await store.images.save("demo-db", "v7", "v7", 2.0)
    assert await store.images.get("demo-web") == KnownGood("v2", "v1")


async def test_silences_are_active_until_they_end_and_can_be_deleted(store: Store) -> None:
    await store.silences.add("S1", "web", None, 10.0, 20.0, "deploy", "alice")
    await store.silences.add("S2", None, "m1", 10.0, 30.0, "", "")
    assert await store.silences.active(15.0) == [
        {
            "id": "S1",
            "service": "web",
            "machine": None,
            "starts_at": 10.0,
            "ends_at": 20.0,
            "comment": "deploy",
            "created_by": "alice",
        },
        {
            "id": "S2",
            "service": None,
            "machine": "m1",
            "starts_at": 10.0,
            "ends_at": 30.0,
            "comment": "",
            "created_by": "",
        },
    ]
    assert [s["id"] for s in await store.silences.active(20.0)] == ["S2"]  # ended at 20
    assert await store.silences.delete("S2") is True
    assert await store.silences.delete("S2") is False  # no longer there
    assert [s["id"] for s in await store.silences.active(15.0)] == ["S1"]


async def test_meta_values_are_replaced_and_survive_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    assert await store.meta.get("mode") is None
    await store.meta.set("mode", "dry-run")
    await store.meta.set("mode", "auto")
    await store.close()
    store = Store(tmp_path)
    await store.open()
    assert await store.meta.get("mode") == "auto"
    await store.close()
