"""`svcproxy run` wired together: sources -> store -> syncer -> dataplane, plus health and metrics.

Dual-stack as kube-proxy does it: one process, one store, one health and one metrics server,
and per IP family a syncer and a dataplane of its own (iptables and ip6tables; the `ip` and
`ip6` tables; listeners on both families' addresses). Each syncer reads its own feed of the
store's changes and keeps its own timing and backoff, so a family that cannot be programmed
(no ip6tables, IPv6 disabled) is reported in the log and by /healthz while the other goes on.

I/O lives here and in the sources; the pieces it wires are testable on their own. SIGTERM and
SIGINT stop the daemon and leave the rules in place (as kube-proxy does), so traffic keeps
flowing while it is down, and the next daemon adopts the rules with an atomic first sync.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field, replace

from ..config import NodeConfig
from ..dataplane import Dataplane, cleanup_other_modes, dataplane
from ..sources import ObjectStore, Source
from ..state import ProxyState
from .health import FamilyHealth, ProxierHealth, ServiceHealth, serve_healthz, serve_metrics, serve_status
from .metrics import Metrics
from .status import StatusServer
from .syncer import Syncer

log = logging.getLogger("svcproxy.runtime.daemon")

# kube-proxy's default is 1s; so is ours: the first change after a quiet spell is programmed
# at once, a burst is coalesced into at most one sync per second.
DEFAULT_MIN_SYNC_PERIOD = 1.0
DEFAULT_SYNC_PERIOD = 30.0


@dataclass
class DaemonOptions:
    cfg: NodeConfig
    mode: str = "iptables"
    sources: list[Source] = field(default_factory=list)
    min_sync_period: float = DEFAULT_MIN_SYNC_PERIOD
    sync_period: float = DEFAULT_SYNC_PERIOD
    healthz_bind_address: str = "0.0.0.0:10256"  # "" disables
    metrics_bind_address: str = "127.0.0.1:10249"  # "" disables
    status_bind_address: str = ""  # the status page; `svcproxy run` defaults to 127.0.0.1:10257
    clear_conntrack: bool = True
    # the IP families to program, primary first; empty: cfg.ip_family alone
    families: tuple[int, ...] = ()


class Daemon:
    def __init__(self, opts: DaemonOptions, dp: Dataplane | None = None,
                 dps: dict[int, Dataplane] | None = None) -> None:
        """dp / dps: dataplanes to use instead of the mode's (tests); dp is the primary family's."""
        self.opts = opts
        self.store = ObjectStore(s.name for s in opts.sources)
        self.metrics = Metrics()
        families = tuple(dict.fromkeys(opts.families or (opts.cfg.ip_family,)))
        given = dict(dps or {})
        if dp is not None:
            given[families[0]] = dp
        self.syncers: dict[int, Syncer] = {}
        # the mode's own dataplanes (not a test's) first remove what other modes left
        self._cleanup: asyncio.Task | None = None
        before = None if given else self._cleanup_other_modes
        for i, family in enumerate(families):
            cfg = replace(opts.cfg, ip_family=family)
            fdp = given[family] if family in given else dataplane(opts.mode, cfg)
            self.syncers[family] = Syncer(self.store, fdp, cfg, min_sync_period=opts.min_sync_period,
                                          sync_period=opts.sync_period, metrics=self.metrics,
                                          clear_conntrack=opts.clear_conntrack,
                                          feed=self.store.feed if i == 0 else self.store.subscribe(),
                                          before_first_sync=before)
        self.syncer = self.syncers[families[0]]  # the primary family's
        self.dp = self.syncer.dp
        self.health = ProxierHealth(
            [FamilyHealth(s.cfg.family_name, timeout=lambda s=s: 2 * s.full_sync_interval,
                          last_updated=lambda s=s: s.last_success, pending_since=s.pending_since)
             for s in self.syncers.values()],
            node_eligible=lambda: self.store.node_eligible.get(opts.cfg.hostname, True))
        for s in self.syncers.values():  # pending changes are read from each feed at scrape time
            fm = self.metrics.family(s.cfg.family_name)
            fm.endpoint_changes_pending.set_function(lambda f=s.feed: f.pending.endpoint_events)
            fm.service_changes_pending.set_function(lambda f=s.feed: f.pending.service_events)
        # the health-check node ports: per family, its endpoints on its addresses (kube-proxy's)
        self.service_healths = {f: ServiceHealth.for_family(self.health, s.cfg) for f, s in self.syncers.items()}
        for f, s in self.syncers.items():
            s.listeners.append(self.service_healths[f].update)
        self.service_health = self.service_healths[families[0]]  # the primary family's
        self.status: StatusServer | None = None
        if opts.status_bind_address:
            cfg = opts.cfg
            local = [*cfg.node_ips, *cfg.local_addresses, "127.0.0.1", *(["::1"] if len(self.syncers) > 1 else [])]
            self.status = StatusServer(lambda: [s.programmed or ProxyState() for s in self.syncers.values()],
                                       lambda: self.store.problems, opts.mode, cfg.hostname, local)
            for s in self.syncers.values():
                s.listeners.append(lambda state, changed, s=s: self._record_sync(s, state, changed))

    def _record_sync(self, syncer: Syncer, state: ProxyState, changed: set[str] | None) -> None:
        if self.status is not None and syncer.last is not None:
            last = syncer.last
            family = syncer.cfg.family_name if len(self.syncers) > 1 else ""
            self.status.syncs.record(changed is None, last.build_seconds + last.apply_seconds,
                                     sorted(changed) if changed is not None else [], len(state.services), family)

    async def _cleanup_other_modes(self) -> None:
        """Once per daemon, whichever family's syncer gets here first; the other waits for it."""
        if self._cleanup is None:
            self._cleanup = asyncio.create_task(asyncio.to_thread(cleanup_other_modes, self.opts.mode, self.opts.cfg))
        await asyncio.shield(self._cleanup)

    async def run(self) -> None:
        """Run until cancelled (SIGTERM/SIGINT); the rules stay in the kernel afterwards."""
        runners = []
        if self.opts.healthz_bind_address:
            runners.append(await serve_healthz(self.opts.healthz_bind_address, self.health, self.metrics))
        if self.opts.metrics_bind_address:
            runners.append(await serve_metrics(self.opts.metrics_bind_address, self.metrics, self.opts.mode))
        if self.status is not None:
            try:
                runners.append(await serve_status(self.opts.status_bind_address, self.status))
            except OSError as e:  # the page is optional: the proxy runs without it
                log.error("status page: cannot listen on %s (%s); running without it (choose another "
                          "--status-bind-address, or '' to turn it off)", self.opts.status_bind_address, e)
        tasks = [asyncio.create_task(self._source(s), name=f"source {s.name}") for s in self.opts.sources]
        tasks += [asyncio.create_task(s.run(), name=f"{s.cfg.family_name} syncer") for s in self.syncers.values()]
        tasks += [asyncio.create_task(s.watch_canary(), name=f"{s.cfg.family_name} canary watch")
                  for s in self.syncers.values()]
        tasks += [asyncio.create_task(self._health_ports(s, self.service_healths[f]),
                                      name=f"{s.cfg.family_name} health ports") for f, s in self.syncers.items()]
        done: set[asyncio.Task] = set()
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()  # a crashed task is a bug: surface it
        finally:
            for t in tasks:
                t.cancel()
            stopped, stuck = await asyncio.wait(tasks, timeout=10)
            for t in stopped:
                if not t.cancelled() and t.exception() is not None and t not in done:
                    log.error("task %s failed while stopping: %s", t.get_name(), t.exception())
            for t in stuck:
                log.error("task %s did not stop within 10s", t.get_name())
            for sh in self.service_healths.values():
                await sh.close()
            for r in runners:
                await r.cleanup()

    async def _source(self, source: Source) -> None:
        await source.run(self.store)

    async def _health_ports(self, syncer: Syncer, ports: ServiceHealth) -> None:
        while True:
            await syncer.synced_once.wait()
            syncer.synced_once.clear()
            await ports.reconcile()


def run_daemon(opts: DaemonOptions) -> None:
    """Blocking entry point for the CLI: runs until SIGTERM or SIGINT."""

    async def main() -> None:
        daemon = Daemon(opts)
        task = asyncio.create_task(daemon.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            log.info("stopping; the rules stay in place")

    asyncio.run(main())
