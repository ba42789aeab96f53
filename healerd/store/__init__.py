"""The state store: every SQL statement of healerd lives in this package, behind named repository methods.

`StateStore` (in `interface`) is what the rest of healerd may rely on; `Store` is its SQLite implementation.
"""

from .base import BaseStore
from .engine import STORE_FAULTS, Fenced
from .interface import (
    Composed,
    Failures,
    IncidentRecord,
    KnownGood,
    OutboxItem,
    PendingMessage,
    RolloutRecord,
    SentElsewhere,
    StateStore,
    StoreError,
    VersionRecord,
)
from .schema import MIGRATIONS
from .sqlite import Store

__all__ = [
    "MIGRATIONS",
    "STORE_FAULTS",
    "BaseStore",
    "Composed",
    "Failures",
    "Fenced",
    "IncidentRecord",
    "KnownGood",
    "OutboxItem",
    "PendingMessage",
    "RolloutRecord",
    "SentElsewhere",
    "StateStore",
    "Store",
    "StoreError",
    "VersionRecord",
]
