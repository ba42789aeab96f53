"""Who may act, and on what: the questions the monitor, the alerts and the remediation engine ask of a
cluster, and the answers of a node that runs alone.

A node alone runs every check, records every event, acts on every decision and has nobody to ask for a
second opinion: that is `Standalone`. A cluster node answers the same questions from its lease and its
membership (`healerd.cluster`). Each part is given its answerer when it is built, never later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .events import Event
    from .health import CheckKey

__all__ = ["STANDALONE", "Confirmation", "Leadership", "Ownership", "Standalone"]


class Confirmation(Protocol):
    """What the other vantage points said: enough of them see the machine down, or not, and who said what."""

    @property
    def confirmed(self) -> bool: ...
    @property
    def detail(self) -> str: ...


class Ownership(Protocol):
    """What the monitor asks: which checks are this node's, which events it records, whether it may write."""

    def acting(self) -> bool:
        """True while this node may do what only one node does (write the fleet's records, send, remediate)."""
        ...

    def owns(self, key: CheckKey) -> bool:
        """True when this node runs that check."""
        ...

    def emits(self, event: Event) -> bool:
        """True when this node records that event (the others mirror it)."""
        ...


class Leadership(Ownership, Protocol):
    """What the remediation engine asks on top: a second opinion before it replaces a machine."""

    async def confirm(self, service: str, machine: str, timeout: float) -> Confirmation | None:
        """The other vantage points' word on a machine this node sees down; None when there is nobody to ask."""
        ...

    async def confirm_zone(
        self, service: str, zone: str, machines: Sequence[str], down: int, timeout: float
    ) -> Confirmation | None:
        """The word of the nodes outside `zone`: do they see at least `down` of its `machines` down (None: alone)."""
        ...


class Standalone:
    """A node that runs alone: it owns everything, records everything, acts, and asks nobody."""

    def acting(self) -> bool:
        return True

    def owns(self, key: CheckKey) -> bool:
        return True

    def emits(self, event: Event) -> bool:
        return True

    async def confirm(self, service: str, machine: str, timeout: float) -> Confirmation | None:
        return None

    async def confirm_zone(
        self, service: str, zone: str, machines: Sequence[str], down: int, timeout: float
    ) -> Confirmation | None:
        return None


STANDALONE = Standalone()
