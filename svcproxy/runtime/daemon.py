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
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import NodeConfig
from ..dataplane import Dataplane, cleanup_other_modes, dataplane
from ..sources import ObjectStore, Source
from ..state import ProxyState
from .health import FamilyHealth, ProxierHealth, ServiceHealth, serve_healthz, serve_metrics, serve_status
from .metrics import Metrics
from .status import EndpointCounters, StatusServer
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
    # kube-proxy's bindAddressHardFail: a healthz/metrics port that cannot be bound stops the
    # daemon; otherwise the failure is logged and the bind retried every 5 s
    bind_address_hard_fail: bool = False
    # the --config file: the daemon exits when it changes, so the pod restarts with the new one
    config_file: str = ""


class ConfigFileChanged(RuntimeError):
    """The --config file changed under a running daemon (kube-proxy exits on it too)."""


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
        # the health-check node ports answer for the primary family's endpoints (on 0.0.0.0)
        self.service_health = ServiceHealth(self.health)
        self.syncer.listeners.append(self.service_health.update)
        self.status: StatusServer | None = None
        if opts.status_bind_address:
            cfg = opts.cfg
            local = [*cfg.node_ips, *cfg.local_addresses, "127.0.0.1", *(["::1"] if len(self.syncers) > 1 else [])]
            self.status = StatusServer(lambda: [s.programmed or ProxyState() for s in self.syncers.values()],
                                       lambda: self.store.problems, opts.mode, cfg.hostname, local,
                                       counters=_counters(opts.mode))
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
        runners: list = []
        tasks = []
        if self.opts.healthz_bind_address:
            tasks.append(self._serve("healthz", runners, lambda: serve_healthz(
                self.opts.healthz_bind_address, self.health, self.metrics)))
        if self.opts.metrics_bind_address:
            tasks.append(self._serve("metrics", runners, lambda: serve_metrics(
                self.opts.metrics_bind_address, self.metrics, self.opts.mode)))
        if self.opts.config_file:
            tasks.append(asyncio.create_task(watch_config_file(self.opts.config_file), name="config file"))
        if self.status is not None:
            try:
                runners.append(await serve_status(self.opts.status_bind_address, self.status))
            except OSError as e:  # the page is optional: the proxy runs without it
                log.error("status page: cannot listen on %s (%s); running without it (choose another "
                          "--status-bind-address, or '' to turn it off)", self.opts.status_bind_address, e)
        tasks += [asyncio.create_task(self._source(s), name=f"source {s.name}") for s in self.opts.sources]
        tasks += [asyncio.create_task(s.run(), name=f"{s.cfg.family_name} syncer") for s in self.syncers.values()]
        tasks.append(asyncio.create_task(self._health_ports(), name="health ports"))
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
            await self.service_health.close()
            for r in runners:
                await r.cleanup()

    def _serve(self, name: str, runners: list, start: Callable[[], Awaitable[Any]]) -> asyncio.Task:
        """Serve one endpoint as kube-proxy's serveHealthz/serveMetrics do: a port that cannot be
        bound is fatal with bindAddressHardFail, else logged and retried every 5 s."""

        async def keep_trying() -> None:
            while True:
                try:
                    runners.append(await start())
                    return
                except OSError as e:
                    if self.opts.bind_address_hard_fail:
                        raise RuntimeError(f"{name} server failed: {e} (bindAddressHardFail is set)") from None
                    log.error("%s server failed: %s; retrying in 5s", name, e)
                    await asyncio.sleep(5)

        return asyncio.create_task(keep_trying(), name=f"{name} server")

    async def _source(self, source: Source) -> None:
        await source.run(self.store)

    async def _health_ports(self) -> None:
        while True:
            await self.syncer.synced_once.wait()
            self.syncer.synced_once.clear()
            await self.service_health.reconcile()


def _file_signature(path: str) -> tuple[str, float, int] | None:
    """What changes when a ConfigMap-mounted file is replaced (its symlink target) or edited."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return real, st.st_mtime, st.st_size


async def watch_config_file(path: str, interval: float = 1.0) -> None:
    """Raise ConfigFileChanged once the file at path is written, replaced or removed."""
    first = _file_signature(path)
    while True:
        await asyncio.sleep(interval)
        if _file_signature(path) != first:
            raise ConfigFileChanged(f"content of the configuration file {path} was updated; exiting so that "
                                    "the restarted proxy reads it (as kube-proxy does)")


def _counters(mode: str) -> EndpointCounters:
    """The status page's per-endpoint counts: conntrack's, plus the BPF counters in ebpf mode."""
    if mode != "ebpf":
        return EndpointCounters()
    from ..dataplane.ebpf import default_pin_root
    from ..dataplane.ebpf.inspect import connections_from_pins

    return EndpointCounters(extra=lambda: connections_from_pins(default_pin_root()))


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
        except (ConfigFileChanged, RuntimeError) as e:
            log.error("%s", e)
            raise SystemExit(1) from None

    asyncio.run(main())
