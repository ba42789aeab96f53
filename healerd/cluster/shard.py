"""Which node checks which machine: rendezvous (highest-random-weight) hashing over the live nodes.

Every node computes the same answer from the same set of live nodes; when a node joins or leaves, only the
machines that node gains or held move (Icinga's `hash % nodes` reshuffles nearly all of them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from ..health import CheckKey


def shard_key(key: CheckKey) -> str:
    """All checks of one machine go to the same node (a service's own checks: by the service)."""
    return f"{key.service}\x00{key.machine}"


def weight(node: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{node}\x00{key}".encode(), digest_size=8).digest(), "big")


def ranked(key: str, nodes: Iterable[str]) -> list[str]:
    """The nodes in order of preference for `key`: the owner first, then who takes over if it leaves."""
    return sorted(nodes, key=lambda n: (weight(n, key), n), reverse=True)


def owner(key: str, nodes: Iterable[str]) -> str | None:
    best: tuple[int, str] | None = None
    for n in nodes:
        w = (weight(n, key), n)
        if best is None or w > best:
            best = w
    return best[1] if best else None
