"""The iptables dataplane: keeps this node's netfilter in step with the desired state.

Rendering is pure (render.py); this module does the I/O: iptables-restore --noflush (one
transaction per call, input on stdin), the jumps from the built-in chains (checked with -C and
inserted with -I only when missing, as kube-proxy does) and cleanup. It remembers what it last
applied, so a partial sync writes only the chains that changed and never reads the ruleset back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import replace

from ...config import NodeConfig
from ...state import ProxyState
from ..protocol import ApplyError, SyncResult
from . import names as n
from .cleanup import cleanup_family
from .ipvs_leftovers import cleanup_ipvs_leftovers
from .jumps import ALL_JUMPS
from .kernel import Iptables, tcp_be_liberal
from .render import BlockCache, Ruleset, build_ruleset
from .restore import ENTRY_NAT, full_batches, partial_input

log = logging.getLogger(__name__)

# Per-service chains per iptables-restore call in a full sync (see restore.py; figures in
# docs/performance.md). Cold start: small batches of new chains are cheapest. Rewriting chains
# that already exist costs a whole-table read per call, so somewhat larger batches win there
# (at 10k services: 2500 chains 27 s, 5000 39 s, 20000 179 s).
DEFAULT_BATCH_CHAINS = 1000
WARM_BATCH_CHAINS = 2500

CANARY_TABLES = ("mangle", "nat", "filter")  # where kube-proxy keeps KUBE-PROXY-CANARY
# built-in chain -> our chain: the jumps the canary watch checks besides the canary chains
SENTINEL_JUMPS = (("nat", "PREROUTING", n.SERVICES), ("filter", "FORWARD", n.FORWARD))


class IptablesDataplane:
    """kube-proxy's iptables mode for one IP family (cfg.ip_family)."""

    mode = "iptables"

    def __init__(self, cfg: NodeConfig, netns: str | None = None,
                 batch_chains: int = DEFAULT_BATCH_CHAINS, warm_batch_chains: int = WARM_BATCH_CHAINS) -> None:
        if not cfg.conntrack_tcp_be_liberal and tcp_be_liberal(netns):
            cfg = replace(cfg, conntrack_tcp_be_liberal=True)
        self.cfg = cfg
        self.ipt = Iptables(cfg.ip_family, netns)
        self.netns = netns
        self.batch_chains = batch_chains
        self.warm_batch_chains = warm_batch_chains
        self.cache = BlockCache()
        self.applied: Ruleset | None = None  # what the kernel holds, as far as we know
        self.existing: set[str] | None = None  # per-service nat chains that may exist in the kernel
        self.needs_full = True
        self.cold = False  # KUBE-SERVICES/KUBE-NODEPORTS do not exist yet: fill them as we go
        self.last_input: str | list[str] = ""  # the last restore input(s), for tests and debugging
        self.nfacct: tuple[str, ...] | None = None  # kube-proxy's nfacct objects, once ensured

    def _ensure_nfacct(self) -> None:
        """Before the first sync, as kube-proxy's: its nfacct objects for the two packet counters
        (IPv4; this process's namespace, the daemon's), created where missing; rules count into
        them only where they exist. Not at construction: cleanup must create nothing."""
        self.nfacct = ()
        if self.netns is None and self.cfg.ip_family == 4:
            from ...runtime.nfacct import ensure_counters

            self.nfacct = ensure_counters()
        if self.nfacct:
            self.cfg = replace(self.cfg, nfacct_counters=self.nfacct)

    # -- sync ---------------------------------------------------------------------------------
    def sync(self, state: ProxyState, changed: Collection[str] | None = None) -> SyncResult:
        if self.nfacct is None:
            self._ensure_nfacct()
        rs = build_ruleset(state, self.cfg, self.cache)
        old = self.applied
        full = changed is None or self.needs_full or old is None or old.large_cluster != rs.large_cluster
        self.needs_full = True  # until this sync succeeds
        if full:
            size = self._full_sync(rs)
        else:
            assert old is not None and changed is not None
            data = partial_input(rs, old, changed)
            self.last_input = data
            if data:
                self.ipt.restore(data)
            size = len(data)
            existing = self.existing if self.existing is not None else set()
            for key in set(changed) | (old.services.keys() - rs.services.keys()):
                existing.difference_update(old.service_chains(key))
                existing.update(rs.service_chains(key))
            self.existing = existing
        self.applied = rs
        self.needs_full = False
        inputs = self.last_input if isinstance(self.last_input, list) else [self.last_input]
        return SyncResult(full=full, input_bytes=size, rules=rs.rule_counts(), written=written_rules(inputs))

    def _full_sync(self, rs: Ruleset) -> int:
        if self.existing is None:
            self._first_sync()
        existing = self.existing or set()
        size = self.batch_chains if self.cold or not existing else self.warm_batch_chains
        batches = full_batches(rs, existing, size, cold=self.cold,
                               kubelet_firewall=n.KUBELET_FIREWALL in rs.filter)
        self.last_input = batches
        started = time.monotonic()
        for i, data in enumerate(batches[:-1]):
            try:
                self.ipt.restore(data)
            except ApplyError as e:
                raise ApplyError(f"full sync, batch {i + 1} of {len(batches)}: {e}") from None
            # Chains of a batch that went through exist now, whatever happens next.
            self.existing = existing = existing | {line[1:].split()[0] for line in data.splitlines()
                                                   if line.startswith(":") and n.is_service_chain(line[1:])}
            if i == 0:
                # the first batch made our fixed chains (KUBE-POSTROUTING's masquerade among
                # them; on a cold start KUBE-SERVICES still empty): hook them in now, as
                # kube-proxy does before its restore, so no service rule is ever reachable
                # while masquerading is not (a cold start's window, seen as unmasqueraded
                # replies in tests/test_dual_stack_traffic.py on a loaded machine)
                self._ensure_jumps()
        try:
            self.ipt.restore(batches[-1])
        except ApplyError as e:
            raise ApplyError(f"full sync, last batch of {len(batches)}: {e}") from None
        self.existing = {c for blocks in rs.services.values() for b in blocks for c in b.chains}
        self.cold = False
        log.info("iptables full sync: %d restore batches, %d bytes, %.2fs", len(batches),
                 sum(map(len, batches)), time.monotonic() - started)
        return sum(map(len, batches))

    def _first_sync(self) -> None:
        """Once per process: learn which service chains an earlier run left (to delete stale
        ones)."""
        if self.cfg.conntrack_tcp_be_liberal:
            log.info("nf_conntrack_tcp_be_liberal set, not installing DROP rules for INVALID packets")
        nat = self.ipt.chains("nat")
        self.existing = {c for c in nat if n.is_service_chain(c)}
        self.cold = not (set(ENTRY_NAT) & nat) and not self.existing

    def _ensure_jumps(self) -> None:
        """Make sure each built-in chain jumps into ours, prepending only what is missing."""
        self.ipt.run("-t", "filter", "-N", n.KUBELET_FIREWALL, check=False)  # already there: fine
        self.ipt.restore(f"*mangle\n:{n.PROXY_CANARY} - [0:0]\nCOMMIT\n")
        for j in ALL_JUMPS:
            if self.ipt.run("-t", j.table, "-C", j.chain, *j.args, check=False).returncode != 0:
                self.ipt.run("-t", j.table, "-I", j.chain, *j.args)

    # -- the canary ---------------------------------------------------------------------------
    def canary_intact(self) -> bool:
        """Whether KUBE-PROXY-CANARY still exists in mangle, nat and filter (a flush that
        deletes chains takes it), and the jumps into nat's and filter's entry chains are still
        there (a flush of the rules alone, `iptables -t nat -F`, takes those). Read-only, as
        the watch calls it beside a sync; each check lists one chain, which iptables-nft does
        without reading the table (0.01 s at 20,000 chains, where `-C` takes 0.4 s)."""
        if not all(self.ipt.run("-t", table, "-S", n.PROXY_CANARY, check=False).returncode == 0
                   for table in CANARY_TABLES):
            return False
        for table, chain, target in SENTINEL_JUMPS:
            rules = self.ipt.run("-t", table, "-S", chain, check=False).stdout.splitlines()
            if not any(rule.endswith(f" -j {target}") for rule in rules):
                return False
        return True

    def forget(self) -> None:
        """Someone else changed our tables: read which chains exist again at the next (full) sync."""
        self.applied, self.existing, self.needs_full = None, None, True

    # -- cleanup ------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Remove every chain and jump svcproxy's iptables mode creates, in both families, and
        first what kube-proxy's ipvs mode left (kube-proxy removes both together: ipvs mode shares
        chain names with iptables mode, so neither's leftovers go while iptables mode runs)."""
        errors: list[str] = []
        try:
            cleanup_ipvs_leftovers(self.netns)
        except ApplyError as e:
            errors.append(str(e))
        for family in (4, 6):
            ipt = Iptables(family, self.netns)
            try:
                cleanup_family(ipt)
            except ApplyError as e:
                errors.append(f"IPv{family}: {e}")
        self.applied, self.existing, self.needs_full, self.cold = None, None, True, False
        if errors:
            raise ApplyError("; ".join(errors))


def written_rules(inputs: list[str]) -> dict[str, int]:
    """Rules (-A/-I lines) per table in iptables-restore inputs: kube-proxy's iptables_last."""
    counts = {"filter": 0, "nat": 0}  # a partial sync with nothing to write wrote no rules
    for data in inputs:
        table = ""
        for line in data.splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
                counts.setdefault(table, 0)
            elif line.startswith(("-A ", "-I ")):
                counts[table] = counts.get(table, 0) + 1
    return counts


__all__ = ["IptablesDataplane", "Iptables", "cleanup_family", "written_rules"]
