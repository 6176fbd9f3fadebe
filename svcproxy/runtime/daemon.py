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
from ..sources.kubernetes import ApiSource, EventSink
from ..state import ProxyState
from . import events
from .health import (
    FamilyHealth,
    ProxierHealth,
    ServiceHealth,
    node_eligible,
    serve_healthz,
    serve_metrics,
    serve_status,
)
from .metrics import Metrics
from .node_setup import ConntrackSettings, NodeSetupError, apply_oom_score_adj, init_node
from .nodeinfo import NodeSetupError as NodeNeverReady
from .nodeinfo import NodeWatch, RestartRequired, setup_warnings, wait_for_node, with_node
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
    status_bind_address: str = ""  # the status page; `svcproxy run` defaults to 127.0.0.1:10263
    clear_conntrack: bool = True
    # the IP families to program, primary first; empty: cfg.ip_family alone
    families: tuple[int, ...] = ()
    # kube-proxy's bindAddressHardFail: a healthz/metrics port that cannot be bound stops the
    # daemon; otherwise the failure is logged and the bind retried every 5 s
    bind_address_hard_fail: bool = False
    # the --config file: the daemon exits when it changes, so the pod restarts with the new one
    config_file: str = ""
    # how long to wait for this node's Node to give its IPs (no --node-ip) and podCIDRs
    # (detect-local mode NodeCIDR): kube-proxy's 30 s and 5 min
    node_ips_timeout: float = 30.0
    pod_cidrs_timeout: float = 300.0
    # node setup at start, as kube-proxy's (node_setup.py): the conntrack sysctls (None: leave
    # them as they are) and this process's OOM score (None: leave it)
    conntrack: ConntrackSettings | None = None
    oom_score_adj: int | None = -999


class ConfigFileChanged(RuntimeError):
    """The --config file changed under a running daemon (kube-proxy exits on it too)."""


class BindFailed(RuntimeError):
    """A healthz or metrics port could not be bound, with bindAddressHardFail set."""


class Daemon:
    def __init__(self, opts: DaemonOptions, dp: Dataplane | None = None,
                 dps: dict[int, Dataplane] | None = None) -> None:
        """dp / dps: dataplanes to use instead of the mode's (tests); dp is the primary family's."""
        self.opts = opts
        self.store = ObjectStore(s.name for s in opts.sources)
        self.metrics = Metrics(opts.mode)
        api = next((s for s in opts.sources if isinstance(s, ApiSource)), None)
        if api is not None:
            api.metrics = self.metrics
        # kube-proxy's Events, posted through the API when there is one (else only logged)
        self.sink = EventSink(api.api, self.metrics) if api is not None else None
        self.events = events.EventRecorder(self.sink)
        families = tuple(dict.fromkeys(opts.families or (opts.cfg.ip_family,)))
        given = dict(dps or {})
        if dp is not None:
            given[families[0]] = dp
        self.syncers: dict[int, Syncer] = {}
        self._given = set(given)  # families whose dataplane a test gave: kept as they are
        # the mode's own dataplanes (not a test's) first remove what other modes left
        self._cleanup: asyncio.Task | None = None
        self._node: asyncio.Task | None = None  # waits for this node's Node, once for all families
        self.node_watch: NodeWatch | None = None
        self.owns_node = not given  # a test's dataplanes: no node setup, no cleanup of other modes
        for i, family in enumerate(families):
            cfg = replace(opts.cfg, ip_family=family)
            fdp = given[family] if family in given else dataplane(opts.mode, cfg)
            self.syncers[family] = Syncer(self.store, fdp, cfg, min_sync_period=opts.min_sync_period,
                                          sync_period=opts.sync_period, metrics=self.metrics,
                                          clear_conntrack=opts.clear_conntrack,
                                          feed=self.store.feed if i == 0 else self.store.subscribe(),
                                          before_first_sync=lambda f=family: self._before_first_sync(f))
        self.syncer = self.syncers[families[0]]  # the primary family's
        self.dp = self.syncer.dp
        self.health = ProxierHealth(
            [FamilyHealth(s.cfg.family_name, timeout=lambda s=s: 2 * s.full_sync_interval,
                          last_updated=lambda s=s: s.last_success or s.started, pending_since=s.pending_since)
             for s in self.syncers.values()],
            node_eligible=lambda: node_eligible(self.store.node_eligible, opts.cfg.hostname, self.store.nodes_watched))
        # pending changes, read from the feeds at scrape time; in dual-stack kube-proxy each
        # proxier's tracker counts every change, so the families' pending changes add up
        feeds = [s.feed for s in self.syncers.values()]
        self.metrics.endpoint_changes_pending.set_function(lambda: sum(f.pending.endpoint_events for f in feeds))
        self.metrics.service_changes_pending.set_function(lambda: sum(len(f.pending.service_keys) for f in feeds))
        # the health-check node ports: per family, its endpoints on its addresses (kube-proxy's)
        self.service_healths = {f: ServiceHealth.for_family(self.health, s.cfg) for f, s in self.syncers.items()}
        for f, s in self.syncers.items():
            self.service_healths[f].on_listen_error = self._health_port_failed
            s.listeners.append(self.service_healths[f].update)
        self.service_health = self.service_healths[families[0]]  # the primary family's
        self.status: StatusServer | None = None
        if opts.status_bind_address:
            cfg = opts.cfg
            local = [*cfg.node_ips, *cfg.local_addresses, "127.0.0.1", *(["::1"] if len(self.syncers) > 1 else [])]
            self.status = StatusServer(lambda: [s.programmed or ProxyState() for s in self.syncers.values()],
                                       lambda: self.store.problems, opts.mode, cfg.hostname, local,
                                       counters=_counters(opts.mode))
            for s in self.syncers.values():
                s.listeners.append(lambda state, changed, s=s: self._record_sync(s, state, changed))

    def _health_port_failed(self, key: str, port: int, error: OSError) -> None:
        note = f'node {self.opts.cfg.hostname} failed to start healthcheck "{key}" on port {port}: {error}'
        self.events.eventf(events.service_ref(key), events.WARNING, "FailedToStartServiceHealthcheck", "Listen", note)

    def _record_sync(self, syncer: Syncer, state: ProxyState, changed: set[str] | None) -> None:
        if self.status is not None and syncer.last is not None:
            last = syncer.last
            family = syncer.cfg.family_name if len(self.syncers) > 1 else ""
            self.status.syncs.record(changed is None, last.build_seconds + last.apply_seconds,
                                     sorted(changed) if changed is not None else [], len(state.services), family)

    async def _before_first_sync(self, family: int) -> None:
        """Every source has synced: complete this family's node config from the Node (its IPs,
        its podCIDRs), then remove other modes' leftovers (only for the mode's own dataplanes)."""
        if self._node is None:
            self._node = asyncio.create_task(self._wait_for_node())
        node = await asyncio.shield(self._node)
        self._use_node(family, node)
        if not self._given:
            await self._cleanup_other_modes()

    async def _wait_for_node(self):  # noqa: ANN202 - Node | None
        opts = self.opts
        live = any(s.name == "api" for s in opts.sources)
        node = await wait_for_node(self.store, opts.cfg.hostname, opts.cfg, live, opts.node_ips_timeout,
                                   opts.pod_cidrs_timeout)
        self.node_watch = NodeWatch(opts.cfg.hostname, opts.cfg, node)
        return node

    def _use_node(self, family: int, node) -> None:  # noqa: ANN001 - Node | None
        """The family's syncer and dataplane take the node config completed from the Node."""
        syncer = self.syncers[family]
        cfg = with_node(syncer.cfg, node, node_ips_given=bool(self.opts.cfg.node_ips))
        for warning in setup_warnings(cfg, primary=syncer is self.syncer):
            log.warning("%s", warning)
        if cfg == syncer.cfg:
            return
        syncer.cfg = cfg
        if family not in self._given:
            syncer.dp = dataplane(self.opts.mode, cfg)
        if syncer is self.syncer:
            self.dp = syncer.dp

    async def _watch_node(self) -> None:
        """Follow this node's Node after start: RestartRequired when its podCIDRs change in
        NodeCIDR mode (kube-proxy exits then), a log line when its IPs change."""
        feed = self.store.subscribe()
        while True:
            await feed.changed.wait()
            if feed.take().nodes and self.node_watch is not None:
                self.node_watch.check(self.store.node(self.opts.cfg.hostname))

    async def _cleanup_other_modes(self) -> None:
        """Once per daemon, whichever family's syncer gets here first; the other waits for it."""
        if self._cleanup is None:
            self._cleanup = asyncio.create_task(asyncio.to_thread(cleanup_other_modes, self.opts.mode, self.opts.cfg))
        await asyncio.shield(self._cleanup)

    def setup_node(self) -> list[str]:
        """kube-proxy's start-up node setup, in its order: conntrack sysctls and route_localnet
        (as --init-only does), then the OOM score; raises NodeSetupError naming the setting."""
        cfg = self.opts.cfg
        lines = init_node(self.opts.mode, tuple(self.syncers), self.opts.conntrack,
                          localhost_nodeports=cfg.localhost_nodeports, nodeport_addresses=cfg.nodeport_addresses,
                          node_ips=cfg.node_ips)
        oom = apply_oom_score_adj(self.opts.oom_score_adj)
        return [*lines, *([oom] if oom else [])]

    async def run(self) -> None:
        """Run until cancelled (SIGTERM/SIGINT); the rules stay in the kernel afterwards.
        The node is set up first (before any server or sync), unless a test gave the dataplanes."""
        if self.owns_node:
            for line in await asyncio.to_thread(self.setup_node):
                log.info("node setup: %s", line)
        runners: list = []
        tasks = []
        if self.opts.healthz_bind_address:
            tasks += await self._serve("healthz", runners, lambda: serve_healthz(
                self.opts.healthz_bind_address, self.health, self.metrics), "FailedToStartProxierHealthcheck")
        if self.opts.metrics_bind_address:
            tasks += await self._serve("metrics", runners, lambda: serve_metrics(
                self.opts.metrics_bind_address, self.metrics, self.opts.mode), "FailedToStartMetricServer")
        if self.opts.config_file:
            tasks.append(asyncio.create_task(watch_config_file(self.opts.config_file), name="config file"))
        if self.status is not None:
            try:
                runners.append(await serve_status(self.opts.status_bind_address, self.status))
            except OSError as e:  # the page is optional: the proxy runs without it
                log.error("status page: cannot listen on %s (%s); running without it (choose another "
                          "--status-bind-address, or '' to turn it off)", self.opts.status_bind_address, e)
        tasks += [asyncio.create_task(self._source(s), name=f"source {s.name}") for s in self.opts.sources]
        # kube-proxy's birth cry: once the servers listen and the sources are started
        self.events.eventf(events.node_ref(self.opts.cfg.hostname), events.NORMAL, "Starting", "StartKubeProxy")
        tasks.append(asyncio.create_task(self.events.run(), name="events"))
        tasks += [asyncio.create_task(s.run(), name=f"{s.cfg.family_name} syncer") for s in self.syncers.values()]
        tasks += [asyncio.create_task(s.watch_canary(), name=f"{s.cfg.family_name} canary watch")
                  for s in self.syncers.values()]
        tasks += [asyncio.create_task(self._health_ports(s, self.service_healths[f]),
                                      name=f"{s.cfg.family_name} health ports") for f, s in self.syncers.items()]
        tasks.append(asyncio.create_task(self._watch_node(), name="node watch"))
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
            if self.sink is not None:
                await self.sink.close()

    async def _serve(self, name: str, runners: list, start: Callable[[], Awaitable[Any]],
                     reason: str) -> list[asyncio.Task]:
        """Serve one endpoint as kube-proxy's serveHealthz/serveMetrics do: a port that cannot be
        bound records kube-proxy's Event (reason), and is fatal with bindAddressHardFail, else
        logged and retried every 5 s (in a task, returned, so the proxy goes on meanwhile)."""

        async def attempt() -> bool:
            try:
                runners.append(await start())
                return True
            except OSError as e:
                self.events.eventf(events.node_ref(self.opts.cfg.hostname), events.WARNING, reason,
                                   "StartKubeProxy", str(e))
                if self.opts.bind_address_hard_fail:
                    await self.events.flush()
                    raise BindFailed(f"{name} server failed: {e} (bindAddressHardFail is set)") from None
                log.error("%s server failed: %s; retrying in 5s", name, e)
                return False

        async def keep_trying() -> None:
            while not await attempt():
                await asyncio.sleep(5)

        if await attempt():
            return []
        return [asyncio.create_task(keep_trying(), name=f"{name} server")]

    async def _source(self, source: Source) -> None:
        await source.run(self.store)

    async def _health_ports(self, syncer: Syncer, ports: ServiceHealth) -> None:
        while True:
            await syncer.synced_once.wait()
            syncer.synced_once.clear()
            await ports.reconcile()


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
        except (ConfigFileChanged, BindFailed) as e:
            log.error("%s", e)
            raise SystemExit(1) from None

    try:
        asyncio.run(main())
    except (RestartRequired, NodeNeverReady, NodeSetupError) as e:  # kube-proxy exits on these too
        log.error("%s", e)
        raise SystemExit(1) from None
