"""A provider's machine whose address no check's URL or load balancer's command can use: said once per address."""

from __future__ import annotations

import structlog

from .machines import Machine, address_problem

log = structlog.get_logger("healerd.monitor")


class UnusableAddresses:
    def __init__(self) -> None:
        self._said: dict[tuple[str, str], str] = {}  # (service, machine) -> the address said unusable

    def say_if_unusable(self, m: Machine) -> None:
        """A provider's machine whose address cannot go into a check's URL or a load balancer's command: said
        once per address (its checks then read UNKNOWN with the reason; nothing is written with it)."""
        key = (m.service, m.id)
        problem = address_problem(m.address, port_required=False)
        if problem is None:
            self._said.pop(key, None)
        elif self._said.get(key) != m.address:
            self._said[key] = m.address
            log.error(
                "a machine's address is unusable",
                service=m.service,
                machine=m.id,
                address=m.address[:100],
                problem=problem,
                hint="the provider gave it: fix the machine's address where the provider reads it",
            )
