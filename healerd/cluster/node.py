"""This node's part in the cluster: membership, leadership, its shard of the checks, and the cluster's view.

The lease is renewed every lease_ttl / 3 on a connection of its own. A leader that cannot renew stops acting
before its lease can expire (Patroni's rule: its local deadline is lease_ttl - lease_ttl / 6 after the start
of its last good round, by its own monotonic clock, while the database counts lease_ttl from a later
instant). A follower looks again just after the lease it saw would expire, so a dead leader is replaced
within lease_ttl and a few hundred milliseconds. Leadership changes run one at a time, off the lease loop:
starting the engine never delays a renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import structlog
from psycopg.conninfo import conninfo_to_dict

from ..config.models import ClusterConfig
from ..events import Event
from ..health import CheckKey
from ..metrics import Metrics
from ..monitor import Monitor
from ..store import STORE_FAULTS
from ..store.lease import Lease, Member, Round
from ..store.postgres import PgStore
from ..store_outage import Basis
from .confirm import Confirmer, Verdict, ZoneWord
from .membership import Membership
from .mirror import Mirror
from .takeover import Takeovers, Transition

log = structlog.get_logger("healerd.cluster")


class Cluster:
    def __init__(
        self,
        config: ClusterConfig,
        membership: Membership,
        *,
        dsn: str,
        advertise: str,
        store: PgStore,
        monitor: Monitor,
        metrics: Metrics,
        token: Callable[[], str | None],
        scheme: str,
    ) -> None:
        self.config = config
        self.membership = membership  # the monitor was given it: who owns what, whether this node may write
        self.node = config.node
        self.zone = config.zone
        self.ttl = config.lease_ttl
        self.advertise = advertise
        self.store = store
        self.monitor = monitor
        self.metrics = metrics
        #: the cluster's database by name: the same on every node, whichever servers each one lists
        self.database = str(conninfo_to_dict(dsn).get("dbname") or store.where)
        self.lease = Lease(dsn, self.node, advertise=advertise, ttl=self.ttl, pgbouncer=config.pgbouncer)
        self.mirror = Mirror(store, monitor, node=self.node)
        self.confirmer = Confirmer(
            self.node,
            monitor,
            members=self.live,
            need=config.confirm_from,
            token=token,
            scheme=scheme,
            zone=config.zone,
        )
        self.last: Round | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.takeovers: Takeovers | None = None  # leadership changes, one at a time, once running
        self.last_error: str | None = None
        #: a follower's views of what the leader decides (incidents, modes), refreshed at each round
        self._on_follower_round: Transition | None = None
        #: machines the leader found that only this node sees down (it is the odd one out)
        self.disputed = 0
        self._stopped = False
        store.pg.on_fenced(self._fenced)

    # -- what the monitor and the engine ask (Leadership) ------------------------------------------------
    def owns(self, key: CheckKey) -> bool:
        return self.membership.owns(key)

    def emits(self, event: Event) -> bool:
        return self.membership.emits(event)

    def acting(self) -> bool:
        return self.membership.acting()

    async def confirm(self, service: str, machine: str, timeout: float) -> Verdict:
        """Ask `confirm_from` vantage points (this node among them) whether they see the machine down."""
        return await self.confirmer.confirm(service, machine, timeout)

    async def confirm_zone(
        self, service: str, zone: str, machines: Sequence[str], down: int, timeout: float
    ) -> ZoneWord:
        """Ask the nodes outside `zone` whether they see `down` of its `machines` down."""
        return await self.confirmer.confirm_zone(service, zone, machines, down, timeout)

    @property
    def epoch(self) -> int | None:
        return self.membership.epoch

    @property
    def live_names(self) -> frozenset[str]:
        return self.membership.live_names

    def leads(self) -> bool:
        """True while this node holds the lease and exercises it: its takeover finished (the engine runs).

        What the API, the status page and healerd_cluster_leader say: a node whose takeover keeps failing
        holds the lease but does nothing a leader does, and says so."""
        return self.takeovers is not None and self.takeovers.leading and self.acting()

    def takeover_error(self) -> str | None:
        t = self.takeovers
        return t.error if t is not None and self.epoch is not None and not t.leading else None

    def outage_basis(self) -> Basis:
        """What identifies an outage of the database alike on every node: its name and the last lease epoch
        this node saw (every node sees the same one, round after round, until the database goes away)."""
        return Basis(self.database, f"epoch {self.last.epoch}" if self.last else "no epoch seen")

    def live(self) -> tuple[Member, ...]:
        return self.last.live(self.ttl) if self.last else ()

    def owned_checks(self) -> int:
        return sum(1 for bc in self.monitor.checks.values() if bc.active)

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def join(self) -> None:
        """The first round, before the monitor binds its checks: this node learns its shard."""
        try:
            await self._round(take=False)
        except Exception:  # the database is away: this node checks every machine until it answers
            log.warning(
                "joined alone: the cluster's database does not answer; this node checks every machine and "
                "remediates nothing until it does (retrying)",
                node=self.node,
                error=self.last_error,
            )
            return
        log.info(
            "joined the cluster",
            node=self.node,
            advertise=self.advertise,
            nodes=sorted(self.live_names),
            leader=self.last.leader if self.last else None,
        )
        with contextlib.suppress(*STORE_FAULTS):  # else the mirror marks where to follow from once it can
            await self.mirror.mark()

    def run(
        self,
        on_lead: Callable[[int], Awaitable[None]],
        on_follow: Transition,
        *,
        on_follower_round: Transition | None = None,
    ) -> None:
        """Start leading when the lease comes to this node, and following the others' changes; while following,
        `on_follower_round` refreshes this node's views of what the leader decides, at each round."""
        self._on_follower_round = on_follower_round
        self.takeovers = Takeovers(
            self.node, self.metrics, epoch=lambda: self.epoch, on_lead=on_lead, on_follow=on_follow
        )
        self.mirror.start()
        self._task = asyncio.create_task(self._loop(), name="healerd-cluster-lease")

    async def stop(self) -> None:
        """Step down (ending the lease now, so another node takes over at once), leave, disconnect."""
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        epoch = self.epoch
        self._lose("this node is stopping")
        if self.takeovers is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.takeovers.stop()
        await self.mirror.stop()
        with contextlib.suppress(Exception):
            if epoch is not None:
                await self.lease.release(epoch)
            await self.lease.leave()
        await self.lease.close()
        await self.confirmer.close()

    # -- the lease loop -------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        period = self.ttl / 3
        while True:
            delay = period
            try:
                found = await self._round(take=True)
                if found is not None and found.leader != self.node and found.expires_in < period:
                    delay = max(0.05, found.expires_in + 0.05)  # be there when it expires
                if found is not None and not self.acting() and self._on_follower_round is not None:
                    await self._on_follower_round()
            except asyncio.CancelledError:
                raise
            except STORE_FAULTS:  # a follower's view of the leader's incidents: the store said it fails, once
                pass
            except Exception:
                log.exception("cluster round failed")
            await asyncio.sleep(delay)

    async def _round(self, take: bool) -> Round | None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            # a slow round that ends in time still counts: the deadline runs from its start
            disputed = self.confirmer.disputed() if self.epoch is not None else None
            async with asyncio.timeout(self.ttl / 2):
                found = await self.lease.round(
                    self.monitor.owned_machines(), self.owned_checks(), take=take, disputed=disputed
                )
        except (TimeoutError, OSError, Exception) as exc:
            self.metrics.counter("cluster_lease_errors").inc()
            error = f"{type(exc).__name__}: {exc}".strip()
            if self.last_error is None:
                log.error("cannot reach the cluster's database; retrying", node=self.node, error=error)
            self.last_error = error
            if not take:
                raise
            return None
        if self.last_error is not None:
            log.warning("the cluster's database answers again", node=self.node)
            self.last_error = None
        self.last = found
        self._membership(found)
        self._odd_one_out(found)
        if take and found.leader == self.node:
            self._renewed(found.epoch, started)
        elif self.epoch is not None:
            self._lose(f"the lease is held by {found.leader} at epoch {found.epoch}")
        self._gauges(found)
        return found

    def _membership(self, found: Round) -> None:
        live = frozenset(m.node for m in found.live(self.ttl)) | {self.node}
        if live == self.live_names:
            return
        joined, left = sorted(live - self.live_names), sorted(self.live_names - live)
        self.membership.nodes(live)
        started, stopped = self.monitor.reshard()
        log.info(
            "cluster membership changed",
            nodes=sorted(live),
            joined=joined,
            left=left,
            checks_started=started,
            checks_stopped=stopped,
        )

    def _odd_one_out(self, found: Round) -> None:
        """Say once when the leader found that this node alone sees machines down, and once when it ends."""
        mine = next((m.disputed for m in found.members if m.node == self.node), 0)
        if mine and not self.disputed:
            log.warning(
                "this node is the odd one out: machines it sees down are up from the other nodes; "
                "its own network or checks are more likely at fault (nothing is replaced on its word)",
                node=self.node,
                machines=mine,
            )
        elif self.disputed and not mine:
            log.info("this node agrees with the other vantage points again", node=self.node)
        self.disputed = mine

    # -- leadership -----------------------------------------------------------------------------------------
    def _renewed(self, epoch: int, started: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = started + self.ttl - self.ttl / 6
        if self.epoch is not None and self.epoch != epoch:
            self._lose(f"the lease came back at a new epoch {epoch}")
        acquired = self.epoch != epoch
        self.membership.leading(epoch, deadline)
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = loop.call_at(deadline, self._lose, "the lease could not be renewed in time")
        if acquired:
            self.store.pg.lead_at(epoch)
            self.metrics.counter("cluster_leader_changes").labels("acquired").inc()
            log.warning("this node leads the cluster", node=self.node, epoch=epoch)
            if self.takeovers is not None:
                self.takeovers.wish(epoch)

    def _lose(self, why: str) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.epoch is None:
            return
        log.warning("this node stops leading", node=self.node, epoch=self.epoch, reason=why)
        self.membership.following()
        self.store.pg.lead_at(None)  # from now on every leader-only write of this node is refused
        self.metrics.counter("cluster_leader_changes").labels("lost").inc()
        if self.takeovers is not None:
            self.takeovers.wish(0)

    def _fenced(self, reason: str) -> None:
        self.metrics.counter("cluster_fenced_writes").inc()
        self._lose(reason)

    def _gauges(self, found: Round) -> None:
        live = found.live(self.ttl)
        self.metrics.gauge("cluster_nodes").set(len(live))
        self.metrics.gauge("cluster_epoch").set(found.epoch)
        self.metrics.gauge("cluster_mirror_lag_seconds").set(self.mirror.lag)
        leader = self.metrics.gauge("cluster_leader")
        shard = self.metrics.gauge("cluster_shard_machines")
        leader.clear()
        shard.clear()
        for m in live:
            # this node by what it does, the others by the lease row
            leader.labels(m.node).set(int(self.leads()) if m.node == self.node else int(m.node == found.leader))
            # its own shard as it is now; the others' as their last heartbeat said
            shard.labels(m.node).set(self.monitor.owned_machines() if m.node == self.node else m.machines)
