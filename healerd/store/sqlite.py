"""The state store on SQLite (the embedded default): one database file in `state_dir`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from .base import BaseStore
from .database import SqliteDatabase, damage, move_aside
from .engine import STORE_FAULTS

log = structlog.get_logger("healerd.store")

if TYPE_CHECKING:
    from .interface import StateStore


class Store(BaseStore):
    """`Store(state_dir)`, then `await open()`."""

    damage = staticmethod(damage)
    move_aside = staticmethod(move_aside)

    def __init__(
        self,
        state_dir: Path,
        history: int = 30,
        *,
        event_log_size: int = 100_000,
        states: Callable[[], dict[str, bool]] = dict,
    ) -> None:
        self._sqlite = SqliteDatabase(state_dir / "state.db")
        super().__init__(self._sqlite, history, event_log_size=event_log_size, states=states)

    @property
    def path(self) -> Path:
        return self._sqlite.path

    @property
    def where(self) -> str:
        return str(self._sqlite.path)

    @property
    def remedy(self) -> str:
        return f"Free space in {self._sqlite.path.parent}."

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def open(self) -> None:
        """Create or migrate the database; a damaged or unusable one raises `StoreError` saying what to do."""
        await self._sqlite.open(then=self.results.load_sequences)

    async def open_readonly(self) -> bool:
        """Open an existing store for reading only (never creates, migrates or writes; a running daemon may
        hold it). False when there is no store yet."""
        return await self._sqlite.open_readonly()

    async def close(self) -> None:
        try:
            await self.flush()
        except STORE_FAULTS as exc:  # a full disk at shutdown: what was buffered is lost, the database is intact
            log.warning("the last results could not be written on close", error=f"{type(exc).__name__}: {exc}")
        await self._sqlite.close()


if TYPE_CHECKING:

    def _satisfies_the_interface(store: Store) -> StateStore:  # checked by mypy: PgStore implements the same
        return store
