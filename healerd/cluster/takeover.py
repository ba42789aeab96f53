"""This node's leadership changes, run one at a time and in order, off the lease loop: starting the engine
never delays a renewal. A takeover that fails is undone and tried again with backoff for as long as this node
holds that epoch: a node never keeps a lease it does not exercise."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import structlog

from ..metrics import Metrics
from ..store import STORE_FAULTS, Fenced

log = structlog.get_logger("healerd.cluster")

Transition = Callable[[], Awaitable[None]]
TAKEOVER_BACKOFF = 0.5  # seconds before the first retry of a failed takeover, doubled each time
TAKEOVER_BACKOFF_MAX = 5.0


class Takeovers:
    def __init__(
        self,
        node: str,
        metrics: Metrics,
        *,
        epoch: Callable[[], int | None],
        on_lead: Callable[[int], Awaitable[None]],
        on_follow: Transition,
    ) -> None:
        self.node = node
        self.metrics = metrics
        self._epoch = epoch  # the epoch this node leads at now, None when it follows
        self._on_lead = on_lead
        self._on_follow = on_follow
        self.leading = False  # the engine runs: the takeover finished and no step-down came since
        self.error: str | None = None  # why the last takeover failed
        self._wishes: asyncio.Queue[int | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._apply_changes(), name="healerd-cluster-leadership")

    def wish(self, epoch: int) -> None:
        """Lead at `epoch` (0: follow)."""
        self._wishes.put_nowait(epoch)

    async def stop(self) -> None:
        """Step down if leading, then end."""
        self._wishes.put_nowait(None)
        await self._task

    async def _apply_changes(self) -> None:
        """Start or stop leading, one change at a time, in order; only the last wish counts."""
        wish = await self._wishes.get()
        while True:
            while not self._wishes.empty():
                wish = self._wishes.get_nowait()
            if self.leading:
                await self._safely(self._on_follow, "stepping down")
            self.leading = False
            if wish is None:
                return
            newer = await self._take_over(wish) if wish and wish == self._epoch() else None
            wish = newer[0] if newer is not None else await self._wishes.get()

    async def _take_over(self, epoch: int) -> tuple[int | None] | None:
        """Start leading at `epoch`; a failed attempt (the store still reconnecting after an outage, say) is
        undone and tried again with backoff while this node holds that epoch. Returns a newer wish that came
        meanwhile (a step-down, a stop)."""
        attempt = 0
        while epoch == self._epoch():
            if await self._safely(functools.partial(self._on_lead, epoch), "taking over"):
                self.leading = epoch == self._epoch()
                self.error = None
                if attempt:
                    log.warning("took over after retrying", node=self.node, epoch=epoch, attempts=attempt + 1)
                return None
            error = self.error
            await self._safely(self._on_follow, "undoing a failed takeover")  # undo what the attempt started
            self.error = error
            attempt += 1
            self.metrics.counter("cluster_takeover_retries").inc()
            if attempt == 1:
                log.warning(
                    "taking over failed; retrying until it succeeds or the lease goes",
                    node=self.node,
                    epoch=epoch,
                    error=self.error,
                )
            try:
                async with asyncio.timeout(min(TAKEOVER_BACKOFF_MAX, TAKEOVER_BACKOFF * 2 ** (attempt - 1))):
                    return (await self._wishes.get(),)
            except TimeoutError:
                continue
        return None

    async def _safely(self, fn: Transition, what: str) -> bool:
        """Run a leadership change; False (and why, in `error`) when it failed."""
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Fenced as exc:  # the lease went while taking over: the next change follows
            self.error = f"the lease went meanwhile: {exc}"
            log.warning(f"{what} cut short: the lease went meanwhile", node=self.node, reason=str(exc))
        except STORE_FAULTS as exc:
            self.error = f"the store fails: {exc}"
            log.warning(f"{what} cut short: the store fails", node=self.node, error=str(exc))
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception(f"{what} failed", node=self.node)
        else:
            return True
        return False
