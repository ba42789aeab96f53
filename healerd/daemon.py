"""The composition root: builds every component from the config, owns the lifecycle and the signals."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import signal
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from . import api, api_access, api_alerts, api_cluster, api_rollout, api_status, openfiles
from ._aio import pending_tasks
from .access import AccessBook, AccessError, keep
from .alert_inputs import AlertInputs
from .alerting import Alerting
from .checks import CheckEnv
from .cluster import Cluster
from .cluster import views as cluster_views
from .cluster.membership import Membership
from .config import Config, ConfigError, Mode, load_config
from .events import Event, EventBus, EventType, Severity
from .health import HealthBook
from .leadership import STANDALONE, Leadership, Ownership
from .log import configure as configure_logging
from .log import log_event
from .metrics import Metrics, prime
from .monitor import Monitor
from .monitor_gauges import counted_states
from .notifiers.base import read_secret
from .remediation.engine import RemediationEngine
from .remediation.safety import Reason
from .store import STORE_FAULTS, BaseStore, Store, StoreError
from .store.postgres import PgStore
from .systemd import Notifier as SystemdNotifier

log = structlog.get_logger("healerd.daemon")

FLUSH_INTERVAL = 1.0
SETTLE_EVERY = 30.0  # seconds between freezes of what survived (see _keep_memory_settled)
SETTLE_FULL_EVERY = 3600.0
PRUNE_INTERVAL = 600.0
ALERT_FLUSH_SECONDS = 2.0  # at shutdown, pending notifications get this long; the rest go out after restart
SLOW_STOP = 4.0  # seconds: a stop still going after this says what it waits for


class Daemon:
    def __init__(self, config: Config, mode: Mode | None = None, *, crash_at: str | None = None) -> None:
        self.config = config
        self.mode = mode or config.daemon.mode
        self.started_at = time.time()
        self.metrics = Metrics()
        self.bus = EventBus()
        self.book = HealthBook()
        cluster = config.cluster
        #: in a cluster, which checks and events are this node's and whether it may write; alone, all of them
        self.membership = Membership(cluster.node) if cluster is not None else None
        ownership: Ownership = self.membership or STANDALONE
        self.store = make_store(config, states=lambda: counted_states(self.book, ownership.acting))
        self.env = CheckEnv(
            lambda: tuple(self.config.daemon.check_paths),
            config.base_dir,
            max_concurrent=config.daemon.max_concurrent_checks,
        )
        self.monitor = Monitor(
            self.book,
            self.bus,
            metrics=self.metrics,
            store=self.store,
            env=self.env,
            max_concurrent=config.daemon.max_concurrent_checks,
            ownership=ownership,
        )
        scheme = "https" if config.daemon.tls_cert_file else "http"
        self.api_token = _read_token(config)
        self.access = _access_book(config, self.api_token)
        self.cluster: Cluster | None = None
        if cluster is not None:
            assert isinstance(self.store, PgStore) and self.membership is not None
            self.cluster = Cluster(
                cluster,
                self.membership,
                dsn=self.store.pg.dsn,
                advertise=cluster.advertise or config.daemon.listen,
                store=self.store,
                monitor=self.monitor,
                metrics=self.metrics,
                token=lambda: _cluster_token(self.config) or self.api_token,
                scheme=scheme,
            )
        leadership: Leadership = self.cluster or STANDALONE
        self.alerting = Alerting(
            self.store,
            self.metrics,
            base_url=f"{scheme}://{config.daemon.listen}",
            may_deliver=leadership.acting,
            outage_basis=self.cluster.outage_basis if self.cluster is not None else None,
        )
        self.alerting.configure(config)
        self.remediation = RemediationEngine(
            self.current_config,
            self.monitor,
            store=self.store,
            bus=self.bus,
            metrics=self.metrics,
            leadership=leadership,
            mode=mode,
            crash_at=crash_at,
        )
        self.alert_inputs = AlertInputs(self.monitor, self.current_config, metrics=self.metrics)
        self._prime_metrics()
        self.stopping = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self.last_reload_error: str | None = None
        events_total = self.metrics.counter("events")
        self.bus.subscribe(self.store.events.add)
        self.bus.subscribe(log_event)
        self.bus.subscribe(lambda e: events_total.labels(e.type.value).inc())
        self.bus.subscribe(self.alerting.on_event)
        self.bus.subscribe(self.alerting.observe, mirrored=True)  # the machines down, whichever node checks them
        self.metrics.gauge("store_writable").set(1)
        self.store.on_fault(self._store_fault)

    def current_config(self) -> Config:
        """The config in force: every part reads it through this (a reload replaces it in one place)."""
        return self.config

    def _store_fault(self, reason: str | None) -> None:
        """The state store started failing (disk full, read-only) or works again: say so, once each way."""
        self.metrics.gauge("store_writable").set(0 if reason else 1)
        if reason:
            self.metrics.counter("store_errors").inc()
        summary = (
            f"the state store {self.store.where} is failing ({reason}); checks and alerts go on, writes are retried"
            if reason
            else f"the state store {self.store.where} works again"
        )
        self.bus.publish(
            Event(
                EventType.STORE_DEGRADED,
                "",
                summary,
                time.time(),
                severity=Severity.CRITICAL if reason else Severity.INFO,
                firing=reason is not None,
                details={"path": self.store.where, "error": reason},
            )
        )

    # -- lifecycle (aiohttp cleanup contexts, started in order and stopped in reverse) ---------------------
    async def _store_ctx(self, app: web.Application) -> AsyncIterator[None]:
        if isinstance(self.store, PgStore):  # a cluster node checks its fleet even while its database is away
            await self.store.open_or_keep_trying()
        else:
            await self.store.open()
        flusher = asyncio.create_task(self._flush_loop(), name="healerd-store-flush")
        yield
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await self.store.close()

    async def _access_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """The access file is read again within a second of a change (a revoked credential is refused from
        then on); when each credential was last used is written every few seconds for `healerd access list`."""
        task = asyncio.create_task(keep(lambda: self.access), name="healerd-access")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(OSError):
            self.access.save_usage()

    async def _cluster_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Join before the checks are bound (this node learns its shard); leave after they stop."""
        assert self.cluster is not None
        await self.cluster.join()
        yield
        await self.cluster.stop()

    async def _alerting_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.alerting.start(lead=self.cluster is None)
        yield
        await self.alerting.stop(flush_for=ALERT_FLUSH_SECONDS)

    async def _checks_ctx(self, app: web.Application) -> AsyncIterator[None]:
        yield
        await self.env.close()

    async def _monitor_ctx(self, app: web.Application) -> AsyncIterator[None]:
        report = await self.monitor.apply(self.config)
        for provider in self.monitor.providers.values():
            await provider.start()
        restored = 0
        if self.store.fault is None:  # else a cluster's database is away at start: no history to replay
            with contextlib.suppress(*STORE_FAULTS):
                restored = await self.monitor.restore()
        self.monitor.scheduler.start()
        log.info(
            "monitoring started",
            checks=report.added,
            restored=restored,
            mode=self.mode.value,
            services=len(self.config.services),
        )
        yield
        await self.monitor.scheduler.stop()
        for provider in self.monitor.providers.values():
            await provider.close()

    async def _remediation_ctx(self, app: web.Application) -> AsyncIterator[None]:
        problems = self.remediation.load_playbooks(self.config)
        if problems:
            raise RuntimeError("playbooks: " + "; ".join(problems))
        if self.cluster is not None:  # only the leader remediates: it starts when this node takes the lease
            self.cluster.run(self._lead, self._follow, on_follower_round=self.remediation.follow_store)
            yield
            await self.cluster.stop()  # steps down first (another node takes over now), stopping the engine
            return
        await self.remediation.apply()
        await self.remediation.start()
        yield
        await self.remediation.stop()

    async def _lead(self, epoch: int) -> None:
        """This node took the cluster's lease: write the fleet's records, resume the journal, deliver alerts."""
        await self.monitor.apply(self.config)
        await self.remediation.apply()
        await self.remediation.start()
        await self.alerting.lead(poll=1.0)
        log.info("leading: remediation, fleet fill, retention and the outbox run on this node", epoch=epoch)

    async def _follow(self) -> None:
        await self.alerting.follow()
        await self.remediation.stop()

    async def _flush_loop(self) -> None:
        last_prune = time.monotonic()
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                self.alert_inputs.expire()
                await self.store.flush()
                if time.monotonic() - last_prune > PRUNE_INTERVAL:
                    last_prune = time.monotonic()
                    await self.store.events.prune()
            except STORE_FAULTS:  # a full disk must not stop monitoring: the store said so once; retried
                self.metrics.counter("store_errors").inc()
            except Exception:
                log.exception("writing to the state store failed; will retry", path=self.store.where)

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[api.errors_and_auth, api_cluster.leader_only])
        app[api.SETTINGS] = self
        app[api.MONITOR] = self.monitor
        app[api.ENGINE] = self.remediation
        app[api.STORE] = self.store
        app[api.ALERTING] = self.alerting
        app[api.METRICS] = self.metrics
        app[api.GATE] = api_access.Gate(self.metrics)
        app[api_alerts.ALERT_INPUTS] = self.alert_inputs
        contexts = [self._store_ctx, self._access_ctx, self._checks_ctx, self._alerting_ctx, self._monitor_ctx]
        contexts.append(self._remediation_ctx)
        if self.cluster is not None:
            contexts.insert(1, self._cluster_ctx)
        app.cleanup_ctx.extend(contexts)
        api.add_routes(app)
        api_cluster.add_routes(app)
        api_rollout.add_routes(app)
        api_status.add_routes(app)
        api_alerts.add_routes(app)
        api_status.setup(app)
        return app

    # -- reload -------------------------------------------------------------------------------------------
    def _prime_metrics(self) -> None:
        prime(self.metrics, self.config, [r.value for r in Reason], [t.value for t in EventType])

    async def reload(self) -> bool:
        """Load the config file again; apply it if valid, keep the running one if not."""
        async with self._reload_lock:
            reloads = self.metrics.counter("config_reloads")
            try:
                new = await asyncio.get_running_loop().run_in_executor(None, load_config, self.config.path)
            except ConfigError as exc:
                reloads.labels("failure").inc()
                self.last_reload_error = f"{len(exc.problems)} problem(s)"
                log.error(
                    "config reload refused; the running config stays in force",
                    path=str(self.config.path),
                    problems=[p.render(exc.filename) for p in exc.problems],
                )
                return False
            if new.daemon.listen != self.config.daemon.listen or new.daemon.state_dir != self.config.daemon.state_dir:
                log.warning("daemon.listen and daemon.state_dir changes take effect at the next restart")
            problems = self.remediation.load_playbooks(new)
            if problems:
                reloads.labels("failure").inc()
                self.last_reload_error = "; ".join(problems)
                log.error("config reload refused; the running config stays in force", problems=problems)
                return False
            self.config = new  # every part reads it from here (current_config)
            self.api_token = _read_token(new)
            try:
                self.access = _access_book(new, self.api_token)
            except RuntimeError as exc:  # the credentials in force stay: nobody is locked out, nobody let in
                log.error("the access file cannot be read; the credentials in force stay", error=str(exc))
            report = await self.monitor.apply(new)
            if self.cluster is None or self.cluster.acting():  # else the leader writes what the new config changes
                await self.remediation.apply()
            self.alerting.configure(new)
            for warning in new.warnings:
                log.warning(warning, path=str(new.path))
            self.last_reload_error = None
            self._prime_metrics()
            reloads.labels("success").inc()
            log.info(
                "config reloaded",
                path=str(new.path),
                added=report.added,
                removed=report.removed,
                kept=report.kept,
            )
            return True

    def summary(self) -> str:
        """One line for systemd's STATUS=: service states, open incidents, mode."""
        states: dict[str, list[str]] = {}
        for name, svc in sorted(self.book.services.items()):
            states.setdefault(svc.state.value, []).append(name)
        parts = [f"{state}: {', '.join(names)}" for state, names in sorted(states.items())]
        engine = self.remediation.views.status()
        text = f"{'; '.join(parts) or 'no services'}; incidents open: {engine['incidents_open']}; mode {engine['mode']}"
        if engine["paused"]:
            text += " (paused)"
        if self.last_reload_error:
            text = f"reload refused ({self.last_reload_error}), previous config running; " + text
        if self.cluster is not None:
            text += f"; {cluster_views.line(self.cluster)}"
        if self.store.fault:
            text = f"STATE STORE FAILING ({self.store.fault}); " + text
        return text


def make_store(config: Config, *, states: Callable[[], dict[str, bool]] = dict) -> BaseStore:
    """SQLite in state_dir (alone), or the cluster's PostgreSQL database; `states` says which services' time
    up or down the history counts."""
    cluster, daemon = config.cluster, config.daemon
    if cluster is None:
        return Store(daemon.state_dir, daemon.history, event_log_size=daemon.event_log_size, states=states)
    dsn = cluster.store if cluster.store_file is None else read_secret(cluster.store_file, None, "cluster.store_file")
    assert dsn is not None  # the config has one of store, store_file
    return PgStore(
        dsn,
        cluster.node,
        history=daemon.history,
        event_log_size=daemon.event_log_size,
        pgbouncer=cluster.pgbouncer,
        idle_timeout=cluster.lease_ttl / 3,
        states=states,
    )


def _tls(config: Config) -> ssl.SSLContext | None:
    """The API's TLS context when daemon.tls_cert_file / tls_key_file are set (validated by the config)."""
    cert, key = config.daemon.tls_cert_file, config.daemon.tls_key_file
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def _access_book(config: Config, api_token: str | None) -> AccessBook:
    """The named credentials of `daemon.access_file`, with `api_token_file`'s token as the admin `token`."""
    usage = config.daemon.state_dir / "access-usage.json"
    try:
        book = AccessBook(config.daemon.access_file, token=api_token, usage=usage)
    except AccessError as exc:
        raise RuntimeError(
            f"daemon.access_file {config.daemon.access_file}: {exc}; fix it (healerd access list shows what it "
            "holds) or remove daemon.access_file"
        ) from None
    book.refresh()
    return book


def _cluster_token(config: Config) -> str | None:
    """The `cluster` credential this node calls the others with (`cluster.token_file`)."""
    path = config.cluster.token_file if config.cluster is not None else None
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip() or None
    except OSError:
        return None


def _read_token(config: Config) -> str | None:
    path = config.daemon.api_token_file
    if path is None:
        return None
    try:
        with Path(path).open("rb") as f:
            token = f.read(16384).decode("utf-8", "replace").strip()
    except OSError as exc:
        raise RuntimeError(f"cannot read daemon.api_token_file {path}: {exc.strerror or exc}") from None
    if not token:
        raise RuntimeError(f"daemon.api_token_file {path} is empty; put the bearer token in it")
    return token


async def serve(config: Config, mode: Mode | None = None, crash_at: str | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; SIGHUP reloads the config. Returns the exit status."""
    daemon = Daemon(config, mode, crash_at=crash_at)
    app = daemon.build_app()
    # keepalive_timeout also bounds how long a connection may take to send a request's head (a client trickling
    # its headers is cut off after it), as aiohttp has no header timeout of its own
    runner = web.AppRunner(app, handle_signals=False, access_log=None, keepalive_timeout=api.HEADER_TIMEOUT)
    loop = asyncio.get_running_loop()
    sd = SystemdNotifier()
    background: set[asyncio.Task[Any]] = set()

    def spawn(coro: Coroutine[Any, Any, Any]) -> None:
        task = loop.create_task(coro)
        background.add(task)
        task.add_done_callback(background.discard)

    async def reload() -> None:
        sd.reloading()
        await daemon.reload()
        sd.ready(daemon.summary())

    async def announce_ready() -> None:
        while not daemon.monitor.ready:  # noqa: ASYNC110 (readiness is computed, not signalled)
            await asyncio.sleep(0.05)
        sd.ready(daemon.summary())
        log.info("ready", checks=len(daemon.monitor.checks))

    def on_term() -> None:
        sd.stopping()
        daemon.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_term)
    loop.add_signal_handler(signal.SIGHUP, lambda: spawn(reload()))
    try:
        await runner.setup()
        site = web.TCPSite(runner, config.daemon.listen_host, config.daemon.listen_port, ssl_context=_tls(config))
        try:
            await site.start()
        except OSError as exc:
            log.error(
                "cannot listen",
                listen=config.daemon.listen,
                error=exc.strerror or str(exc),
                hint="another process uses the port; change daemon.listen",
            )
            return 1
        _settle_memory()
        spawn(_keep_memory_settled(config))
        scheme = "https" if config.daemon.tls_cert_file else "http"
        log.info("healerd running", listen=f"{scheme}://{config.daemon.listen}", config=str(config.path))
        spawn(sd.watchdog(daemon.summary))
        spawn(announce_ready())
        await daemon.stopping.wait()
        log.info("stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        for task in background:
            task.cancel()
        slow = loop.call_later(SLOW_STOP, _report_slow_stop)
        faulthandler.dump_traceback_later(SLOW_STOP * 3)  # a loop blocked outright: every thread's stack
        try:
            await runner.cleanup()
        finally:
            slow.cancel()
            faulthandler.cancel_dump_traceback_later()
        sd.close()
    log.info("stopped")
    return 0


def _report_slow_stop() -> None:
    """Say what a stop that takes long still waits for (systemd kills the daemon at TimeoutStopSec)."""
    log.warning(
        f"stopping takes longer than {SLOW_STOP:g}s; still running",
        tasks=pending_tasks()[:30],
        hint="notifications being flushed and remediations being interrupted take a few seconds; "
        "anything else is a bug worth reporting with this line",
    )


def _settle_memory() -> None:
    """Move what start-up built (config, machines, checks) out of the collector's sight.

    With a large fleet a full collection otherwise re-scans millions of long-lived objects every few
    seconds and stalls the loop for ~100 ms; frozen objects are never scanned again.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


async def _keep_memory_settled(config: Config) -> None:
    """Keep what lives long out of the collector's sight while the daemon runs.

    Once every check has run, and every SETTLE_EVERY seconds after: collect the young generations (no
    full-collection pause) and freeze what survived. That is the keep-alive connections and TLS sessions of a
    fleet of distinct hosts and the result history filling up over the first `history` rounds: left in the
    collector's sight, every full collection re-scans them, and its cost grows with the fleet (at 10,000
    distinct hosts it was a tenth of the CPU and growing). Once an hour (SETTLE_FULL_EVERY) everything is
    unfrozen and fully collected, so that cyclic garbage frozen meanwhile (a replaced machine's connection)
    is reclaimed after all."""
    checks = [c for s in config.services.values() for c in (*s.checks, *s.service_checks)]
    await asyncio.sleep(min(SETTLE_EVERY, max((c.interval + c.timeout for c in checks), default=0.0) + 1.0))
    last_full = time.monotonic()
    while True:
        if time.monotonic() - last_full >= SETTLE_FULL_EVERY:
            gc.unfreeze()
            started = time.perf_counter()
            gc.collect()
            log.debug("full garbage collection", seconds=round(time.perf_counter() - started, 3))
            last_full = time.monotonic()
        else:
            gc.collect(1)
        gc.freeze()
        await asyncio.sleep(SETTLE_EVERY)


def run(
    config_path: str | Path, mode: Mode | None = None, crash_at: str | None = None, move_aside: bool = False
) -> int:
    config = load_config(config_path)
    configure_logging(config.daemon.log_format, config.daemon.log_level)
    for warning in config.warnings:
        log.warning(warning, path=str(config.path))
    before, after = openfiles.raise_soft_limit()
    if after != before:
        log.info("open files limit raised", soft_before=before, soft=after)
    if crash_at:
        log.warning(
            "FAULT INJECTION ARMED: this daemon kills itself (SIGKILL) at a playbook step; for crash tests only",
            crash_at=crash_at,
        )
    if move_aside:
        problem = Store.damage(config.daemon.state_dir)
        if problem:
            moved = Store.move_aside(config.daemon.state_dir)
            log.warning("damaged state database moved aside; starting empty", problem=problem, moved_to=str(moved))
    runner: Callable[[Coroutine[Any, Any, int]], int]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # only the import: an ImportError raised by the daemon itself is not a reason to restart
        runner = asyncio.run
    try:
        return runner(serve(config, mode, crash_at))
    except StoreError as exc:
        log.error("cannot start", reason=str(exc))
        return 1
