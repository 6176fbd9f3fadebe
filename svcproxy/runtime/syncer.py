"""The sync loop: keep the kernel in step with the store, with kube-proxy's timing.

Timing follows kube-proxy's BoundedFrequencyRunner:
- a change is programmed at once if the previous sync started at least --min-sync-period ago,
  otherwise when that period is over; changes arriving meanwhile are coalesced into one sync;
- every --sync-period a full sync runs even with no change, repairing drift (a chain someone
  deleted by hand comes back);
- a failed sync is retried with exponential backoff (min-sync-period doubling up to the sync
  period), and the retry is a full sync;
- a canary watch (kube-proxy's iptables Monitor, checked every quarter sync period) forces a
  full sync at once when someone else flushed or deleted our rules, since at scale the
  periodic one is stretched to minutes.
Nothing is programmed before every source has delivered its first complete state.

Work per sync grows with what changed: only the services whose Service or EndpointSlices
changed are rebuilt (state.update_state), and their keys go to Dataplane.sync.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from ..config import NodeConfig
from ..dataplane import Dataplane, SyncResult
from ..sources.store import ChangeFeed, Changes, ObjectStore
from ..state import ProxyState, update_state
from . import conntrack
from .metrics import FamilyMetrics, Metrics

log = logging.getLogger("svcproxy.runtime.syncer")


# How long the canary watch lets a foreign flush go on before resyncing (kube-proxy polls the
# other tables' canaries for up to 5 s; a shorter fixed wait keeps the repair quick).
CANARY_SETTLE = 0.2


def canary_interval(sync_period: float) -> float:
    """How often the canary is checked: a quarter of --sync-period, between 0.5 s and 5 s, so
    a foreign flush is repaired well within one sync period (kube-proxy checks once per period)."""
    return min(max(sync_period / 4, 0.5), 5.0)


@dataclass
class SyncStats:
    """What the last sync did (for logs, tests and benchmarks)."""

    full: bool
    services: int  # services in the desired state
    changed: int  # services re-rendered (all of them on a full sync)
    build_seconds: float
    apply_seconds: float
    result: SyncResult | None


class Syncer:
    def __init__(self, store: ObjectStore, dp: Dataplane, cfg: NodeConfig, *, min_sync_period: float = 1.0,
                 sync_period: float = 30.0, metrics: Metrics | None = None,
                 clear_conntrack: bool = True, feed: ChangeFeed | None = None,
                 before_first_sync: Callable[[], Awaitable[None]] | None = None) -> None:
        """One IP family's sync loop (cfg.ip_family); a dual-stack daemon runs one per family,
        each on its own feed of the store's changes. before_first_sync is awaited once, when
        every source has synced and just before the first sync (the daemon removes the other
        modes' leftovers there)."""
        self.store, self.dp, self.cfg = store, dp, cfg
        self.feed = feed if feed is not None else store.feed
        self.min_sync_period = max(0.0, min_sync_period)
        self.sync_period = max(sync_period, self.min_sync_period, 0.001)
        self.metrics: FamilyMetrics | None = metrics.family(cfg.family_name) if metrics is not None else None
        self.all_metrics = metrics  # the families the FamilyMetrics view does not carry
        self.clear_conntrack = clear_conntrack
        self.state = ProxyState(zone=cfg.zone)  # the desired state as last built
        self.programmed: ProxyState | None = None  # the state last applied successfully
        self.last_start = float("-inf")  # monotonic start of the last sync attempt
        self.last_full = float("-inf")  # monotonic end of the last successful full sync
        self.last_full_seconds = 0.0  # how long the last full sync took
        self.last_success: float | None = None  # wall time of the last successful sync
        self.need_full = True
        self.failures = 0  # consecutive failures (backoff)
        self.retry_at: float | None = None
        self.oldest_pending: float | None = None  # monotonic time of the oldest unprogrammed change
        self.syncs = 0
        self.last: SyncStats | None = None
        # called after each successful sync with the state and the changed keys (None: all)
        self.listeners: list[Callable[[ProxyState, set[str] | None], None]] = []
        self.synced_once = asyncio.Event()
        self.before_first_sync = before_first_sync
        self.no_local = NoLocalCounts()
        self.started = time.time()  # /healthz's lastUpdated until the first sync (kube-proxy's SyncLoop start)
        self.last_queued = self.started  # wall time a sync was last asked for
        if self.metrics:
            self.metrics.last_queued_timestamp.set_function(self.queued_timestamp)
        self.wake = asyncio.Event()  # set by the canary watch: a full sync is due now
        self.reread = False  # the dataplane's record of the kernel is wrong: forget it first
        self.syncing = False
        self.cleanup_failures_seen = 0  # the dataplane's count, as last recorded
        if metrics is not None:
            self._zero_failure_metrics(metrics)

    # -- the loop ----------------------------------------------------------
    async def run(self) -> None:
        while not self.store.synced:
            await self.feed.changed.wait()
            self.feed.changed.clear()
        log.info("all sources synced; programming %s rules", self.cfg.family_name)
        if self.before_first_sync is not None:
            await self.before_first_sync()
        while True:
            now = time.monotonic()
            due = self.last_full + self.full_sync_interval if self.retry_at is None else self.retry_at
            if not self.feed.changed.is_set() and not self.wake.is_set() and due > now:
                await self._wait_for_work(due - now)
            earliest = self.last_start + self.min_sync_period
            if self.retry_at is not None:
                earliest = max(earliest, self.retry_at)
            wait = earliest - time.monotonic()
            if wait > 0:
                self._note_pending()
                await asyncio.sleep(wait)
            periodic = time.monotonic() >= self.last_full + self.full_sync_interval or self.wake.is_set()
            self.wake.clear()
            await self.sync_once(full=periodic)

    async def _wait_for_work(self, timeout: float) -> None:
        """Until a change arrives, the canary watch asks for a sync, or timeout seconds pass."""
        waits = [asyncio.ensure_future(self.feed.changed.wait()), asyncio.ensure_future(self.wake.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    @property
    def full_sync_interval(self) -> float:
        """--sync-period, stretched to 4x the last full sync's duration: a full sync blocks
        partial ones while it runs, so at a scale where it takes a minute (10k services in
        iptables mode) the daemon still spends most of its time answering changes quickly."""
        return max(self.sync_period, 4 * self.last_full_seconds)

    def _note_pending(self) -> None:
        pend = self.feed.pending
        if pend.oldest is not None and self.oldest_pending is None:
            self.oldest_pending = pend.oldest

    def queued_timestamp(self) -> float:
        """kube-proxy's last_queued_timestamp: set whenever a change asks for a sync (read at
        scrape time, so a change waiting behind a stuck sync shows at once)."""
        queued = self.feed.pending.queued_at
        return max(self.last_queued, queued) if queued is not None else self.last_queued

    # -- one sync ----------------------------------------------------------
    def build(self, changes: Changes) -> tuple[ProxyState, set[str] | None]:
        """The new desired state, and the keys of services that differ (None: all of them)."""
        touched = None if changes.all or self.programmed is None else changes.services
        return update_state(self.state, self.store, self.cfg, touched)

    async def sync_once(self, full: bool = False) -> bool:
        """Build and apply; True on success. A failure keeps the old rules and schedules a full retry."""
        self.last_start = time.monotonic()
        changes = self.feed.take()
        if changes.queued_at is not None:
            self.last_queued = max(self.last_queued, changes.queued_at)
        oldest = self.oldest_pending if self.oldest_pending is not None else changes.oldest
        # the taken changes stay pending until the kernel has them: a health check answered
        # while the sync runs in its thread must still see how long they have waited
        self.oldest_pending = oldest
        t0 = time.perf_counter()
        state, changed = self.build(changes)
        full = full or self.need_full or changed is None
        build_s = time.perf_counter() - t0
        m = self.metrics
        if m:
            m.endpoint_changes_total.inc(changes.endpoint_events)
            m.service_changes_total.inc(changes.service_events)
        previous = self.programmed
        self.state = state
        t1 = time.perf_counter()
        if self.reread:
            self.reread = False
            forget = getattr(self.dp, "forget", None)
            if forget is not None:
                forget()
        self.syncing = True
        try:
            result = await asyncio.to_thread(self.dp.sync, state, None if full else sorted(changed or ()))
        except Exception as e:  # ApplyError, or a bug in a backend: keep going, old rules stay
            self._failed(changes, oldest, full, e)
            return False
        finally:
            self.syncing = False
            self._record_cleanup_failures()
        apply_s = time.perf_counter() - t1
        if self.clear_conntrack:
            # before the sync counts as done (its log line, its last-sync timestamp): until
            # then a UDP flow may still be DNATed to an endpoint that is going away, and
            # whoever waits for the sync to remove that pod would cut the flow (seen in
            # bench/reliability's rolling updates: 10 lost datagrams in 34,000)
            await self._clear_conntrack(previous, state, None if full else changed)
        self.programmed = state
        self.oldest_pending = None
        self.need_full = False
        self.failures, self.retry_at = 0, None
        self.syncs += 1
        self.last_success = time.time()
        if full:
            self.last_full = time.monotonic()
            self.last_full_seconds = apply_s
        n_changed = len(changed) if changed is not None else count_changed(previous, state)
        self.last = SyncStats(full, len(state.services), n_changed, build_s, apply_s, result)
        log.info("%s %s sync: %d service(s), %d changed, build %.1f ms, apply %.1f ms, input %d bytes",
                 self.cfg.family_name, "full" if full else "partial", len(state.services), n_changed, build_s * 1e3, apply_s * 1e3,
                 result.input_bytes if result else 0)
        if m:
            self._record(m, full, time.perf_counter() - t0, result, changes, state, changed)
        for listener in self.listeners:
            listener(state, None if full else changed)
        self.synced_once.set()
        return True

    def _failed(self, changes: Changes, oldest: float | None, full: bool, e: Exception) -> None:
        self.feed.requeue(changes)
        if oldest is not None:
            self.oldest_pending = oldest
        self.need_full = True
        self.failures += 1
        backoff = min(self.sync_period, max(self.min_sync_period, 0.5) * 2 ** (self.failures - 1))
        self.retry_at = time.monotonic() + backoff
        if self.all_metrics is not None and self.dp.mode == "nftables":
            self.all_metrics.nftables_sync_failures.labels(ip_family=self.cfg.family_name).inc()
        if self.metrics:
            # both counted as kube-proxy's iptables proxier does (a partial failure is also a
            # restore failure); exported in iptables mode only
            self.metrics.restore_failures.inc()
            if not full:
                self.metrics.partial_restore_failures.inc()
        log.error("%s sync failed (%s); the previous %s rules stay in place; retrying a full sync in %.1fs",
                  self.cfg.family_name, e, self.cfg.family_name, backoff, exc_info=not isinstance(e, RuntimeError))

    def _record(self, m: FamilyMetrics, full: bool, seconds: float, result: SyncResult | None, changes: Changes,
                state: ProxyState, changed: set[str] | None) -> None:
        m.sync_duration.observe(seconds)
        (m.sync_full_duration if full else m.sync_partial_duration).observe(seconds)
        m.last_timestamp.set(self.last_success or time.time())
        now = time.time()
        for times in changes.trigger_times.values():
            for t in times:
                m.network_programming.observe(max(0.0, now - t))
        if result:
            for table, n in result.rules.items():
                m.iptables_total.labels(table=table).set(n)
            for table, n in result.written.items():
                m.iptables_last.labels(table=table).set(n)
        internal, external = self.no_local.update(state, self.cfg, None if full else changed)
        m.no_local_endpoints.labels(traffic_policy="internal").set(internal)
        m.no_local_endpoints.labels(traffic_policy="external").set(external)

    async def _clear_conntrack(self, old: ProxyState | None, new: ProxyState, changed: set[str] | None) -> None:
        """kube-proxy 1.36's reconcile of the UDP conntrack table, after any sync that changed
        a UDP service, the first one included (old None): flows to pods removed while no proxy
        ran are cleared after a restart."""
        if not conntrack.needs_reconcile(old, new, changed):
            return
        try:
            done = await asyncio.to_thread(conntrack.reconcile, new, self.cfg.ip_family)
        except Exception:  # a stale flow must not stop the proxy: log it, the next change retries
            log.exception("%s conntrack reconcile failed", self.cfg.family_name)
            return
        if self.metrics:
            self.metrics.conntrack_cleared.inc(done.deleted)
        if self.all_metrics is not None:
            family = self.cfg.family_name
            self.all_metrics.conntrack_reconcile_duration.labels(ip_family=family).observe(done.seconds)
            self.all_metrics.conntrack_reconcile_deleted.labels(ip_family=family).inc(done.deleted)

    def _zero_failure_metrics(self, m: Metrics) -> None:
        """This family's failure-detection series from the start, at 0, as the other per-family
        ones are: an alert's rate() then sees 0 rather than no series until the first failure.
        The nftables counters only in nftables mode, the canary's only where there is one."""
        labels = {"ip_family": self.cfg.family_name}
        if self.clear_conntrack:
            m.conntrack_reconcile_duration.labels(**labels)
            m.conntrack_reconcile_deleted.labels(**labels)
        if self.dp.mode == "nftables":
            m.nftables_sync_failures.labels(**labels)
            m.nftables_cleanup_failures.labels(**labels)
        if hasattr(self.dp, "canary_intact"):
            m.canary_resyncs.labels(**labels)

    def _record_cleanup_failures(self) -> None:
        """kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total: the stale chains the
        dataplane could not delete (it counts them; it knows no metrics)."""
        seen = getattr(self.dp, "cleanup_failures", 0)
        if self.all_metrics is not None and seen > self.cleanup_failures_seen:
            self.all_metrics.nftables_cleanup_failures.labels(ip_family=self.cfg.family_name).inc(
                seen - self.cleanup_failures_seen)
        self.cleanup_failures_seen = seen

    # -- the canary watch --------------------------------------------------
    async def watch_canary(self, interval: float | None = None, settle: float = CANARY_SETTLE) -> None:
        """kube-proxy's canary monitor, at a shorter interval: when someone else flushed or
        deleted our rules (firewalld reload, `iptables -F -X`, `nft flush ruleset`), force a
        full resync now instead of at the next periodic one, which at scale is minutes away.
        Dataplanes without a canary_intact() are not watched."""
        intact = getattr(self.dp, "canary_intact", None)
        if intact is None:
            return
        interval = canary_interval(self.sync_period) if interval is None else interval
        while True:
            await asyncio.sleep(interval)
            if self.syncing or self.last_success is None or self.need_full or self.wake.is_set():
                continue  # a full sync is coming (or running) anyway
            if await asyncio.to_thread(intact) is not False:
                continue
            # a flush goes table by table: let it finish, so one resync repairs it all
            await asyncio.sleep(settle)
            log.warning("%s: our rules were flushed or deleted by someone else (canary gone); "
                        "resyncing everything now", self.cfg.family_name)
            if self.all_metrics is not None:
                self.all_metrics.canary_resyncs.labels(ip_family=self.cfg.family_name).inc()
            self.reread = True
            self.wake.set()

    # -- health ------------------------------------------------------------
    def pending_since(self) -> float | None:
        """Monotonic time of the oldest change not yet in the kernel, or None if all is programmed."""
        if self.oldest_pending is not None:
            return self.oldest_pending
        return self.feed.pending.oldest


def count_changed(old: ProxyState | None, new: ProxyState) -> int:
    """How many services a full sync actually changed (added, removed or different), so that
    the periodic full sync that repairs drift does not log work it did not do."""
    if old is None:
        return len(new.services)
    keys = old.services.keys() | new.services.keys()
    return sum(old.services.get(k) != new.services.get(k) for k in keys)


def service_no_local(state: ProxyState, key: str, cfg: NodeConfig) -> tuple[int, int]:
    """One service's share of kube-proxy's no_local_endpoints_total (internal, external): its
    ports whose traffic policy is Local and which have usable endpoints, but none on this node
    (their traffic is dropped here). Ports without any endpoint are rejected, not counted."""
    internal = external = 0
    svc = state.services.get(key)
    for port in svc.ports if svc else ():
        if not (port.internal_policy_local or port.external_policy_local):
            continue
        policy = state.policy(port, cfg)
        if policy.has_endpoints:
            internal += not policy.has_internal
            external += not policy.has_external
    return internal, external


def no_local_endpoints(state: ProxyState, cfg: NodeConfig) -> tuple[int, int]:
    """no_local_endpoints_total (internal, external) over every service."""
    shares = [service_no_local(state, key, cfg) for key in state.services]
    return sum(i for i, _ in shares), sum(e for _, e in shares)


class NoLocalCounts:
    """no_local_endpoints_total kept up to date with the services a sync changed (kube-proxy
    recounts every port on every sync; at 10,000 services that is milliseconds per partial sync)."""

    def __init__(self) -> None:
        self.shares: dict[str, tuple[int, int]] = {}
        self.internal = self.external = 0

    def update(self, state: ProxyState, cfg: NodeConfig, changed: Collection[str] | None) -> tuple[int, int]:
        """changed: the keys a partial sync rebuilt; None recounts every service."""
        if changed is None:
            self.shares = {key: share for key in state.services if any(share := service_no_local(state, key, cfg))}
        else:
            for key in changed:
                share = service_no_local(state, key, cfg)
                if any(share):
                    self.shares[key] = share
                else:
                    self.shares.pop(key, None)
        self.internal = sum(i for i, _ in self.shares.values())
        self.external = sum(e for _, e in self.shares.values())
        return self.internal, self.external
