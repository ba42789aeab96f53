"""What a provider reads of a service: a narrow view of its config, so that plugins depend on these few
attributes and not on the config package (which imports the plugins to validate their options)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class MachineEntry(Protocol):
    """A machine listed in the config (a `static` service's)."""

    @property
    def id(self) -> str: ...

    @property
    def address(self) -> str: ...

    @property
    def zone(self) -> str: ...


class ServiceSpec(Protocol):
    """The service as a provider sees it: its name, the machines listed for it, how to discover the others."""

    @property
    def name(self) -> str: ...

    @property
    def machines(self) -> Sequence[MachineEntry]: ...

    @property
    def discovery(self) -> Mapping[str, Any] | None: ...
