"""A keep-alive pool with a bound: at fleet scale every distinct host keeps a socket between checks, and
without a bound the daemon runs out of file descriptors (its own API listener first). The least recently
used hosts' idle connections are closed first."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import aiohttp


class BoundedConnector(aiohttp.TCPConnector):
    """A TCPConnector that keeps idle keep-alive connections to at most `max_idle_hosts` hosts."""

    def __init__(self, *, max_idle_hosts: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_idle_hosts = max(1, max_idle_hosts)
        self._recent: OrderedDict[Any, None] = OrderedDict()  # hosts by last release, oldest first
        self.evicted = 0

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        super()._release(key, protocol, should_close=should_close)
        conns = getattr(self, "_conns", None)  # aiohttp's idle pool (a private detail: stay inert without it)
        if conns is None or key not in conns:
            return
        self._recent[key] = None
        self._recent.move_to_end(key)
        while len(conns) > self.max_idle_hosts and self._recent:
            oldest, _ = self._recent.popitem(last=False)
            idle = conns.pop(oldest, None)
            for proto, _t in idle or ():
                proto.close()
                self.evicted += 1
