"""This node's standing in the cluster as the monitor needs it: the live nodes (which checks and events are
this node's) and the lease it holds (whether it may write). The cluster's lease loop updates it; the monitor
is given it when built, before the cluster exists, because the cluster watches the monitor's checks."""

from __future__ import annotations

import asyncio

from ..events import Event
from ..health import CheckKey
from .shard import owner, shard_key


class Membership:
    def __init__(self, node: str) -> None:
        self.node = node
        self.live_names: frozenset[str] = frozenset({node})
        self.epoch: int | None = None  # the epoch this node leads at, None when it follows
        self.deadline = 0.0  # loop time until which this node may act as the leader

    # -- what the cluster's lease loop tells it ---------------------------------------------------------------
    def nodes(self, live: frozenset[str]) -> None:
        self.live_names = live

    def leading(self, epoch: int, deadline: float) -> None:
        """This node holds the lease at `epoch` and may act until `deadline` (loop time)."""
        self.epoch, self.deadline = epoch, deadline

    def following(self) -> None:
        self.epoch, self.deadline = None, 0.0

    # -- what the monitor asks -------------------------------------------------------------------------------
    def owns(self, key: CheckKey) -> bool:
        return owner(shard_key(key), self.live_names) == self.node

    def emits(self, event: Event) -> bool:
        """Machine events are recorded by the node that checks the machine; service-wide ones by the leader."""
        if event.machine:
            return owner(f"{event.service}\x00{event.machine}", self.live_names) == self.node
        return self.acting()

    def acting(self) -> bool:
        """True while this node holds the lease and its local deadline has not passed: its writes are not fenced."""
        return self.epoch is not None and asyncio.get_running_loop().time() < self.deadline
