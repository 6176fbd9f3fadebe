"""nftables mode: keeps the kernel's `kube-proxy` table in step with the desired state.

A full sync declares the table's fixed part, then declares and fills the per-service chains
chunk by chunk (new chains are unreferenced until the commit, so traffic never sees them
half-built) and then commits the base chains and every map element in one transaction,
flushing chains no longer used. A worker thread renders and encodes the next transaction while
the kernel digests the current one. A partial sync is one transaction with only the changed
services' chains, sets and elements. Unused chains are deleted by a later sync, a second after
their flush. What the kernel holds is tracked in a Kernel record, updated only after a
transaction succeeded.

Transactions go through our own netlink encoder on a kept-open socket (netlink.py): nft
re-reads the whole table on every run, seconds at 10,000 services. Only the table, its map and
set declarations and the fixed regular chains go through `nft -f`, and a full sync sends them
while the table is still empty (cold start) or when they changed.

Modules, along the data flow: render.py/service.py/layout.py (state -> chains and elements,
pure), transaction.py (what to add, change and delete), pipeline.py (a full sync's
transactions), this file (the sync itself and the record of the kernel), kernel.py with
netlink.py and session.py (into the kernel and back)."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from ...config import NodeConfig
from ...gcpause import gc_paused
from ...state import ProxyState
from ..protocol import ApplyError, SyncResult
from . import names, session
from .commands import Tx
from .kernel import Driver, KernelIO
from .layout import NAT_PREROUTING
from .pipeline import CommitStep, FullSyncPlanner
from .render import BlockCache, ServiceRules
from .transaction import Kernel, declare_fixed, fixed_part, plan_partial, shared_refs

log = logging.getLogger(__name__)

STALE_CHAIN_DELAY = 1.0  # seconds between flushing a chain no longer used and deleting it

# Above this many per-service chains, a periodic full sync checks names and the fixed chains
# only, and rewrites the fixed chains only when they changed (see _check_drift).
DRIFT_CHECK_MAX_CHAINS = 5000


class NftablesDataplane:
    """The nftables Dataplane: sync() and cleanup(), and the record of what the kernel holds.
    Its parts: the driver that takes transactions into the kernel (self.io, kernel.py; or
    fake.FakeKernel, an in-memory table for tests) and the planner of a full sync's
    transactions (self.planner, pipeline.py)."""

    mode = "nftables"

    def __init__(self, cfg: NodeConfig, nft: Sequence[str] = ("nft",), use_netlink: bool = True,
                 io: Driver | None = None) -> None:
        self.cfg = cfg
        self.family = names.family_keyword(cfg.ip_family)
        self.io: Driver = io if io is not None else KernelIO(cfg, nft, use_netlink)
        self.cache = BlockCache(cfg)
        self.planner = FullSyncPlanner(cfg, self.cache, self.io)
        self.kernel: Kernel | None = None  # None: not read yet (startup)
        self.applied: dict[str, ServiceRules] = {}  # service key -> rules in the kernel
        self.need_full = True
        self.service_cidrs: tuple[str, ...] | None = None  # as in the kernel's cluster-ips-check
        # Chains no longer used, flushed at the given monotonic time. The kernel refuses to
        # delete a chain that a just-removed (anonymous) map element still pins, so, as
        # kube-proxy does, they are deleted by a later sync.
        self.stale: dict[str, float] = {}
        self.cleanup_failures = 0  # stale chains that could not be deleted (kube-proxy's metric)

    @property
    def transactions(self) -> list[str]:
        """The nft input of the last sync (tests, debugging)."""
        return self.io.transactions

    @property
    def timings(self) -> list[tuple[str, int, float]]:
        """Per transaction of the last sync: (path, commands, seconds); render and wait too."""
        return self.io.timings

    @property
    def use_netlink(self) -> bool:
        """False once the kernel refused our encoding and nft took the same transaction."""
        return self.io.use_netlink

    # --- the Dataplane protocol ---------------------------------------------------------

    def sync(self, state: ProxyState, changed: Collection[str] | None = None) -> SyncResult:
        self.io.transactions = []
        self.io.timings = []
        try:
            self._delete_stale_chains()
            if changed is None or self.need_full or self.kernel is None or state.service_cidrs != self.service_cidrs:
                if changed is None and self.kernel is not None and not self.need_full:
                    self._check_drift(self.kernel)  # a periodic resync repairs hand edits
                with gc_paused():
                    return self._full(state)
            return self._partial(state, changed)
        except ApplyError:
            self.need_full = True
            self.kernel = None  # what the kernel holds is uncertain now: read it again
            raise

    def cleanup(self) -> None:
        """Delete the kube-proxy tables (both families), nothing else; fine when there are none."""
        for family in ("ip", "ip6"):
            self.io.delete_table(family)
        self.kernel = None
        self.applied = {}
        self.stale = {}
        self.service_cidrs = None
        self.need_full = True

    def canary_intact(self) -> bool | None:
        """Whether our table still holds the rule of its nat-prerouting base chain: `nft delete
        table`, `nft flush table` and `nft flush ruleset` all take it. kube-proxy's nftables
        mode has no canary chain; this reads one chain over a netlink socket of its own (the
        watch calls it beside a sync), never the whole table. None: cannot tell."""
        if not isinstance(self.io, KernelIO):
            return None  # an in-memory kernel (tests): nothing outside can flush it
        try:
            sock = session.Session()
            try:
                return bool(sock.dump(self.family, session.GETRULE, names.TABLE, frozenset(), NAT_PREROUTING))
            finally:
                sock.close()
        except OSError as e:
            log.debug("nftables: canary check failed: %s", e)
            return None

    def forget(self) -> None:
        """Someone else changed our table: read it again at the next (full) sync."""
        self.kernel, self.need_full, self.stale = None, True, {}

    def _delete_stale_chains(self) -> None:
        kernel = self.kernel
        if kernel is None or not self.stale:
            return
        now = time.monotonic()
        due = sorted(n for n, t in self.stale.items() if now - t >= STALE_CHAIN_DELAY and kernel.chains.get(n) == ())
        if not due:
            return
        tx = Tx(self.cfg)
        tx.delete_chains(due)
        try:
            self.io.run_tx(tx)
        except ApplyError as e:  # not fatal: they are empty; try again next time
            self.cleanup_failures += 1
            log.warning("could not delete stale chains yet: %s", e)
            return
        for name in due:
            kernel.chains.pop(name, None)
            self.stale.pop(name, None)

    # --- full sync ----------------------------------------------------------------------

    def _full(self, state: ProxyState) -> SyncResult:
        """1. the fixed part, 2. the per-service chains chunk by chunk, 3. the commit."""
        recreate_base = self.kernel is None
        if self.kernel is None:
            self.kernel = self.io.read_kernel()
        self._declare_fixed(state, self.kernel)
        commit_step = self._fill(state, self.kernel, recreate_base)
        self._commit(state, self.kernel, commit_step)
        return self._result(True)

    def _declare_fixed(self, state: ProxyState, kernel: Kernel) -> None:
        """The table, its maps and sets and the fixed regular chains, through nft: on a cold
        start while the table is still empty (nft reads it all first), later only when they
        changed or the table is small enough to rewrite them cheaply (which repairs hand edits)."""
        fixed = fixed_part(self.cfg, state.service_cidrs)
        if kernel.fixed != fixed or len(kernel.chains) <= DRIFT_CHECK_MAX_CHAINS:
            self.io.run_tx(declare_fixed(self.cfg, state.service_cidrs))
            kernel.fixed = fixed
        kernel.exists = True

    def _fill(self, state: ProxyState, kernel: Kernel, recreate_base: bool) -> CommitStep:
        """Declare new per-service chains and affinity sets and fill them (and chains of
        unknown content, found at startup), chunk by chunk: transaction k fills chunk k and
        declares chunk k+1. New chains are unreferenced until the commit, and a chain of
        unknown content is flushed and refilled in one transaction, so traffic never sees one
        half-built. A worker thread renders and encodes transaction k+1 while the kernel
        digests transaction k (the socket call releases the GIL); it then prepares the commit
        while the kernel digests the last fill."""
        if self.io.use_netlink:
            self.io.netlink_session()  # opened here, used by the worker to frame batches
        view = Kernel(True, dict(kernel.chains), dict(kernel.sets), dict(kernel.elements))  # the worker's own record
        steps = self.planner.steps(state, view, recreate_base)
        waited = 0.0  # for the timings: how long the kernel waited for the worker
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(next, steps)
            while True:
                start = time.perf_counter()
                step = pending.result()
                waited += time.perf_counter() - start
                if isinstance(step, CommitStep):
                    break
                pending = pool.submit(next, steps)
                self.io.run_tx(step.tx, step.batch)
                kernel.sets.update((c.name, c) for c in step.declared_sets)
                kernel.chains.update((name, ()) for name in step.declared)
                kernel.chains.update((c.name, c.rules) for c in step.filled)
        self.io.timings += [("render", len(state.services), self.planner.render_seconds), ("wait", 0, waited)]
        return step

    def _commit(self, state: ProxyState, kernel: Kernel, step: CommitStep) -> None:
        """Base chains, all elements, changed chains; chains no longer used become stale
        (deleted by a later sync), unused sets go; then the record of the kernel is the new state."""
        self.io.run_tx(step.tx, step.batch)
        rules, chains = step.rules, step.chains
        now = time.monotonic()
        for name in kernel.chains:
            if name not in chains:
                self.stale.setdefault(name, now)
        kernel.chains = {name: () for name in self.stale if name in kernel.chains} | {
            name: c.rules for name, c in chains.items()}
        for name in chains:
            self.stale.pop(name, None)
        kernel.sets = dict(step.sets)
        kernel.elements = step.elements
        kernel.refs = shared_refs(r.elements for r in rules)
        self.applied = {r.service.key: r for r in rules}
        self.service_cidrs = state.service_cidrs
        self.need_full = False
        self._sweep_affinity(rules)

    # --- partial sync -------------------------------------------------------------------

    def _partial(self, state: ProxyState, changed: Collection[str]) -> SyncResult:
        kernel = self.kernel
        assert kernel is not None
        new_rules: dict[str, ServiceRules | None] = {}
        moved = self.cache.claim(state, changed)  # maps layout: ports whose shared slot now collides (or no longer)
        for key in sorted({*changed, *moved}):
            svc = state.services.get(key)
            new_rules[key] = self.cache.service(svc, state.zone) if svc is not None else None
        plan = plan_partial(self.cfg, kernel, [(self.applied.get(k), new) for k, new in new_rules.items()])
        tx = plan.tx
        if tx:
            self.io.run_tx(tx)
        # the transaction went through: record it
        for name, c in plan.chains.items():
            kernel.chains[name] = c.rules
        kernel.sets.update(plan.sets)  # name -> declaration
        now = time.monotonic()
        for name in plan.stale_chains:
            kernel.chains[name] = ()
            self.stale[name] = now
        for name in plan.chains:
            self.stale.pop(name, None)
        for name in plan.stale_sets:
            kernel.sets.pop(name, None)
        for container, keys in plan.deletes.items():
            for k in keys:
                kernel.elements.get(container, {}).pop(k, None)
        for container, els in plan.adds.items():
            for el in els:
                kernel.elements.setdefault(container, {})[el.key] = el
        for ref, delta in plan.refs.items():
            if kernel.refs.get(ref, 0) + delta > 0:
                kernel.refs[ref] += delta
            else:
                kernel.refs.pop(ref, None)
        for key, new in new_rules.items():
            if new is None:
                self.applied.pop(key, None)
            else:
                self.applied[key] = new
        self._sweep_affinity(r for r in new_rules.values() if r is not None)
        return self._result(False)

    # --- ClientIP affinity (maps layout) ------------------------------------------------

    def _sweep_affinity(self, rules: Iterable[ServiceRules]) -> None:
        """Delete the affinity entries that point at an endpoint no longer a member of its
        service port. The packet path writes only members (the members- set guards its
        update), so after a commit no new stale entry appears; this removes the old ones. An
        entry can time out between the read and the delete, so a refused sweep reads again."""
        for r in rules:
            for name in r.sets:
                if not name.startswith(names.CLIENT_AFFINITY) or name not in (self.kernel.sets if self.kernel else {}):
                    continue
                members = names.MEMBERS + name[len(names.CLIENT_AFFINITY):]
                allowed = {ipaddress.ip_address(e.key.split(" . ")[0]) for e in r.elements if e.container == members}
                for attempt in (1, 2):
                    try:
                        stale = [client for client, ep in self.io.affinity_entries(name)
                                 if ipaddress.ip_address(ep) not in allowed]
                        if stale:
                            tx = Tx(self.cfg)
                            tx.delete_elements(name, stale)
                            self.io.run_tx(tx)
                        break
                    except ApplyError as e:
                        if attempt == 2:
                            log.warning("nftables: could not remove stale affinity entries of %s: %s", name, e)

    # --- hand edits --------------------------------------------------------------------

    def _check_drift(self, kernel: Kernel) -> None:
        """Find what someone changed by hand so the full sync repairs it: a deleted table means
        starting afresh; per-service chains whose rule count differs are rewritten.

        Counting rules needs `nft list table`, which nft 1.0.6 takes ~28 s to print at 10k
        services; above DRIFT_CHECK_MAX_CHAINS the table, the chain names and the fixed chains'
        rule counts are checked (a netlink dump of every rule takes ~20 s there)."""
        if len(kernel.chains) > DRIFT_CHECK_MAX_CHAINS:
            found = self.io.read_kernel()
            if not found.exists or found.chains.keys() != kernel.chains.keys():
                log.warning("nftables: our table or chains changed by hand; reprogramming it all")
                self.kernel = found
            elif self._fixed_chains_changed(kernel):
                kernel.fixed = None  # the full sync re-declares them
            return
        counts = self.io.rule_counts()
        if counts is None:
            log.warning("nftables: table %s %s is gone; reprogramming it", self.family, names.TABLE)
            self.kernel = self.io.read_kernel()
            return
        for name, rules in list(kernel.chains.items()):
            if rules is not None and counts.get(name) != len(rules):
                log.warning("nftables: chain %s was changed by hand; rewriting it", name)
                if name in counts:
                    kernel.chains[name] = None
                else:
                    del kernel.chains[name]

    def _fixed_chains_changed(self, kernel: Kernel) -> bool:
        """Rule counts of the fixed regular chains (services, masquerading, ...) against what
        declare_fixed() wrote: one small netlink dump per chain. Large tables rewrite them only
        when this finds a difference (through nft, which reads the whole table first)."""
        if not self.io.use_netlink or kernel.fixed is None:
            return False
        try:
            for chain in kernel.fixed[1]:
                found = self.io.netlink_session().dump(self.family, session.GETRULE, names.TABLE, frozenset(), chain.name)
                if len(found) != len(chain.rules):
                    log.warning("nftables: chain %s was changed by hand; rewriting the fixed chains", chain.name)
                    return True
        except OSError as e:
            log.warning("nftables: could not read the fixed chains (%s); rewriting them", e)
            return True
        return False

    def _result(self, full: bool) -> SyncResult:
        kernel = self.kernel
        assert kernel is not None
        rules = sum(len(r) for r in kernel.chains.values() if r)
        elements = sum(len(v) for v in kernel.elements.values())
        return SyncResult(full=full, input_bytes=sum(len(t) for t in self.io.transactions),
                          rules={"rules": rules, "chains": len(kernel.chains), "elements": elements})
