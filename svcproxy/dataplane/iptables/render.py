"""The iptables renderer: (ProxyState, NodeConfig) -> iptables-restore input, as kube-proxy writes it.

build_ruleset() assembles a Ruleset (top-level chains + one PortBlock per service port) that the
dataplane turns into full or partial restore inputs; render_ruleset() prints the complete ruleset,
including the jumps from the built-in chains, for `svcproxy render` and the tracer.
Output is deterministic: service ports sorted by name, endpoints in state order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import NodeConfig
from ...gcpause import gc_paused
from ...localdetect import local_detector
from ...state import EndpointInfo, ProxyState, ServicePortInfo, ServiceState
from . import names as n
from .blocks import LOCALHOST_NFACCT, PortBlock, RenderContext, port_block
from .jumps import builtin_jump_lines
from .toplevel import filter_top, localhost_nodeports, nat_top

# kube-proxy switches to "large cluster mode" (no per-endpoint comments) above this many endpoints.
LARGE_CLUSTER_ENDPOINTS = 1000


@dataclass
class Ruleset:
    """A rendered ruleset, kept structured so the dataplane can write full or partial restores."""

    family: int
    large_cluster: bool
    filter: dict[str, str]  # top-level filter chain -> its rules (KUBE-FIREWALL only when written)
    nat: dict[str, str]  # top-level nat chain -> its rules
    services: dict[str, tuple[PortBlock, ...]] = field(default_factory=dict)  # "ns/name" -> blocks

    def rule_counts(self) -> dict[str, int]:
        nat = sum(v.count("\n") for v in self.nat.values())
        nat += sum(b.nat_rule_count for blocks in self.services.values() for b in blocks)
        return {"filter": sum(v.count("\n") for v in self.filter.values()), "nat": nat}

    def service_chains(self, key: str) -> tuple[str, ...]:
        return tuple(c for b in self.services.get(key, ()) for c in b.chains)


class BlockCache:
    """PortBlocks by (service port, endpoints) value for one RenderContext.

    Each build keeps only the entries it used, so memory follows the current state; a changed
    context (node config, zone, large-cluster mode) starts afresh. A service whose ServiceState is
    the very object seen last time (the daemon rebuilds only changed services) is reused without
    even hashing its endpoints.
    """

    def __init__(self) -> None:
        self.ctx: RenderContext | None = None
        self.blocks: dict[tuple[ServicePortInfo, tuple[EndpointInfo, ...]], PortBlock] = {}
        self.by_service: dict[str, tuple[ServiceState, tuple[PortBlock, ...]]] = {}
        self.misses = 0  # blocks rendered afresh by the last build

    def begin(self, ctx: RenderContext) -> dict:
        if ctx != self.ctx:
            self.ctx, self.blocks, self.by_service = ctx, {}, {}
        return {}


def render_context(state: ProxyState, cfg: NodeConfig) -> RenderContext:
    total = sum(len(eps) for svc in state.services.values() for eps in svc.endpoints.values())
    detector = local_detector(cfg)
    return RenderContext(
        family=cfg.ip_family, hostname=cfg.hostname, zone=state.zone or cfg.zone,
        masquerade_all=cfg.masquerade_all, if_local=detector.iptables(), if_not_local=detector.iptables(negate=True),
        node_ip=cfg.primary_ip,
        large_cluster=total > LARGE_CLUSTER_ENDPOINTS,
        localhost_nfacct=localhost_nodeports(cfg) and LOCALHOST_NFACCT in cfg.nfacct_counters,
    )


def build_ruleset(state: ProxyState, cfg: NodeConfig, cache: BlockCache | None = None) -> Ruleset:
    """Render every service port (reusing cached blocks) and the top-level chains around them.

    The cyclic garbage collector is paused meanwhile: rendering allocates hundreds of thousands of
    strings and tuples but no cycles, and collector passes over the growing heap would make a
    large render superlinear."""
    with gc_paused():
        return _build(state, cfg, cache)


def _build(state: ProxyState, cfg: NodeConfig, cache: BlockCache | None) -> Ruleset:
    cache = cache or BlockCache()
    ctx = render_context(state, cfg)
    fresh = cache.begin(ctx)
    old = cache.blocks
    seen = cache.by_service
    by_service: dict[str, tuple[ServiceState, tuple[PortBlock, ...]]] = {}
    services: dict[str, tuple[PortBlock, ...]] = {}
    misses = 0
    for key in sorted(state.services):
        svc = state.services[key]
        prev = seen.get(key)
        if prev is not None and prev[0] is svc:
            services[key] = prev[1]
            by_service[key] = prev
            continue
        blocks = []
        ports = svc.ports if len(svc.ports) == 1 else sorted(svc.ports, key=lambda p: p.name)
        for port in ports:
            eps = svc.endpoints.get(port.name, ())
            k = (port, eps)
            block = old.get(k) if old else None
            if block is None:
                block = port_block(port, eps, ctx)
                misses += 1
            fresh[k] = block
            blocks.append(block)
        services[key] = tuple(blocks)
        by_service[key] = (svc, services[key])
    cache.misses = misses
    cache.blocks, cache.by_service = fresh, by_service
    all_blocks = [b for blocks in services.values() for b in blocks]
    return Ruleset(cfg.ip_family, ctx.large_cluster, filter_top(all_blocks, cfg), nat_top(all_blocks, cfg),
                   services)


def format_table(table: str, top: dict[str, str], blocks: list[PortBlock] | None,
                 extra_decls: tuple[str, ...] = (), head_rules: str = "") -> str:
    """One `*table ... COMMIT` section: declarations first, then rules grouped by chain."""
    parts = [f"*{table}\n"]
    parts += [f":{c} - [0:0]\n" for c in (*top, *extra_decls)]
    if blocks:
        parts += [b.decls for b in blocks]
    parts.append(head_rules)
    parts += list(top.values())
    if blocks:
        for b in blocks:
            parts += b.chain_rules
    parts.append("COMMIT\n")
    return "".join(parts)


def format_ruleset(rs: Ruleset, cfg: NodeConfig, with_jumps: bool = True) -> str:
    """The complete ruleset text. with_jumps adds the built-in chain jumps (display and tracing);
    the dataplane ensures those separately, as kube-proxy does, so it passes False."""
    blocks = [b for bl in rs.services.values() for b in bl]
    filter_top = dict(rs.filter)
    extra: tuple[str, ...] = ()
    if with_jumps and n.KUBELET_FIREWALL not in filter_top:
        extra = (n.KUBELET_FIREWALL,)  # the jumps need the (empty) chain to exist
    return (format_table("filter", filter_top, None, extra,
                         builtin_jump_lines("filter") if with_jumps else "")
            + format_table("nat", rs.nat, blocks, (), builtin_jump_lines("nat") if with_jumps else ""))


_DEFAULT_CACHE = BlockCache()


def render_ruleset(state: ProxyState, cfg: NodeConfig) -> str:
    """Complete iptables-restore input (filter and nat tables) for this node, kube-proxy's layout."""
    return format_ruleset(build_ruleset(state, cfg, _DEFAULT_CACHE), cfg)
