"""The iptables renderer: (ProxyState, NodeConfig) -> iptables-restore input, as kube-proxy writes it.

build_ruleset() assembles a Ruleset (top-level chains + one PortBlock per service port) that the
dataplane turns into full or partial restore inputs; render_ruleset() prints the complete ruleset,
including the jumps from the built-in chains, for `svcproxy render` and the tracer.
Output is deterministic: service ports sorted by name, endpoints in state order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import NodeConfig
from ...state import EndpointInfo, ProxyState, ServicePortInfo, ServiceState
from . import names as n
from .blocks import PortBlock, RenderContext, port_block

# kube-proxy switches to "large cluster mode" (no per-endpoint comments) above this many endpoints.
LARGE_CLUSTER_ENDPOINTS = 1000


@dataclass(frozen=True, slots=True)
class Jump:
    """A rule in a built-in chain that leads into one of our chains (kube-proxy's iptablesJumpChains)."""

    table: str
    chain: str  # built-in chain: PREROUTING, INPUT, ...
    target: str
    comment: str
    extra: tuple[str, ...] = ()

    @property
    def args(self) -> list[str]:
        """The rule as iptables arguments (without -A/-I CHAIN)."""
        comment = ["-m", "comment", "--comment", self.comment] if self.comment else []
        return [*self.extra, *comment, "-j", self.target]

    @property
    def line(self) -> str:
        comment = f' -m comment --comment "{self.comment}"' if self.comment else ""
        extra = " " + " ".join(self.extra) if self.extra else ""
        return f"-A {self.chain}{extra}{comment} -j {self.target}\n"


_NEW = ("-m", "conntrack", "--ctstate", "NEW")
JUMPS: tuple[Jump, ...] = (
    Jump("filter", "INPUT", n.EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _NEW),
    Jump("filter", "FORWARD", n.EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _NEW),
    Jump("filter", "INPUT", n.NODEPORTS, "kubernetes health check service ports"),
    Jump("filter", "FORWARD", n.SERVICES, "kubernetes service portals", _NEW),
    Jump("filter", "OUTPUT", n.SERVICES, "kubernetes service portals", _NEW),
    Jump("filter", "FORWARD", n.FORWARD, "kubernetes forwarding rules"),
    Jump("filter", "INPUT", n.PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    Jump("filter", "OUTPUT", n.PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    Jump("filter", "FORWARD", n.PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
    Jump("nat", "OUTPUT", n.SERVICES, "kubernetes service portals"),
    Jump("nat", "PREROUTING", n.SERVICES, "kubernetes service portals"),
    Jump("nat", "POSTROUTING", n.POSTROUTING, "kubernetes postrouting rules"),
)
# kubelet's own firewall chain, which kube-proxy ensures too (and never deletes: kubelet owns it).
KUBELET_JUMPS: tuple[Jump, ...] = (
    Jump("filter", "INPUT", n.KUBELET_FIREWALL, ""),
    Jump("filter", "OUTPUT", n.KUBELET_FIREWALL, ""),
)

FILTER_TOP = (n.NODEPORTS, n.SERVICES, n.EXTERNAL_SERVICES, n.KUBELET_FIREWALL, n.FORWARD, n.PROXY_FIREWALL,
              n.PROXY_CANARY)
NAT_TOP = (n.NODEPORTS, n.SERVICES, n.MARK_MASQ, n.POSTROUTING, n.PROXY_CANARY)


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
    cidrs = cfg.family_cluster_cidrs
    return RenderContext(
        family=cfg.ip_family, hostname=cfg.hostname, zone=state.zone or cfg.zone,
        masquerade_all=cfg.masquerade_all, local_cidr=cidrs[0] if cidrs else "", node_ip=cfg.primary_ip,
        large_cluster=total > LARGE_CLUSTER_ENDPOINTS,
    )


def build_ruleset(state: ProxyState, cfg: NodeConfig, cache: BlockCache | None = None) -> Ruleset:
    """Render every service port (reusing cached blocks) and the top-level chains around them."""
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
    cache.misses = misses
    cache.blocks = fresh
    all_blocks = [b for blocks in services.values() for b in blocks]
    return Ruleset(cfg.ip_family, ctx.large_cluster, _filter_top(all_blocks, cfg), _nat_top(all_blocks, cfg),
                   services)


def localhost_nodeports(cfg: NodeConfig) -> bool:
    """kube-proxy turns localhost NodePorts off for IPv6 and when --nodeport-addresses excludes 127.0.0.1."""
    if cfg.ip_family != 4 or not cfg.localhost_nodeports:
        return False
    ips = cfg.nodeport_ips
    return ips is None or "127.0.0.1" in ips


def _filter_top(blocks: list[PortBlock], cfg: NodeConfig) -> dict[str, str]:
    mark = masquerade_mark(cfg)
    out = {
        n.NODEPORTS: "".join([b.filter_nodeports for b in blocks]),
        n.SERVICES: "".join([b.filter_services for b in blocks]),
        n.EXTERNAL_SERVICES: "".join([b.filter_external for b in blocks]),
    }
    if localhost_nodeports(cfg):
        out[n.KUBELET_FIREWALL] = (
            f'-A {n.KUBELET_FIREWALL} -m comment --comment "block incoming localnet connections" '
            "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n")
    out[n.FORWARD] = (
        f"-A {n.FORWARD} -m conntrack --ctstate INVALID -j DROP\n"
        f'-A {n.FORWARD} -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark}/{mark} -j ACCEPT\n'
        f'-A {n.FORWARD} -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
    out[n.PROXY_FIREWALL] = "".join([b.filter_firewall for b in blocks])
    out[n.PROXY_CANARY] = ""
    return out


def _nat_top(blocks: list[PortBlock], cfg: NodeConfig) -> dict[str, str]:
    mark = masquerade_mark(cfg)
    tail_comment = '-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain"'
    ips = cfg.nodeport_ips
    if ips is None:
        dest = "-m addrtype --dst-type LOCAL"
        if cfg.ip_family == 6:
            dest += " ! -d ::1/128"
        elif not localhost_nodeports(cfg):
            dest += " ! -d 127.0.0.0/8"
        tail = f"-A {n.SERVICES} {tail_comment} {dest} -j {n.NODEPORTS}\n"
    else:
        loop_ok = localhost_nodeports(cfg)
        tail = "".join(f"-A {n.SERVICES} {tail_comment} -d {ip} -j {n.NODEPORTS}\n" for ip in ips
                       if not _is_loopback(ip) or loop_ok)
    return {
        n.NODEPORTS: "".join([b.nat_nodeports for b in blocks]),
        n.SERVICES: "".join([b.nat_services for b in blocks]) + tail,
        n.MARK_MASQ: f"-A {n.MARK_MASQ} -j MARK --or-mark {mark}\n",
        n.POSTROUTING: (
            f"-A {n.POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN\n"
            f"-A {n.POSTROUTING} -j MARK --xor-mark {mark}\n"
            f'-A {n.POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" '
            "-j MASQUERADE --random-fully\n"),
        n.PROXY_CANARY: "",
    }


def masquerade_mark(cfg: NodeConfig) -> str:
    return f"{1 << cfg.masquerade_bit:#x}"


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"


def jumps(cfg: NodeConfig) -> tuple[Jump, ...]:
    """All jumps from built-in chains, in the order kube-proxy ensures (prepends) them."""
    return JUMPS + KUBELET_JUMPS


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


BUILTIN_CHAINS = {"filter": ("INPUT", "FORWARD", "OUTPUT"), "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}


def builtin_jump_lines(table: str, cfg: NodeConfig) -> str:
    """The jumps as they end up in the built-in chains once prepended in kube-proxy's order
    (each prepend goes first, so the last one ensured leads), grouped by built-in chain."""
    mine = [j for j in reversed(jumps(cfg)) if j.table == table]
    return "".join(j.line for chain in BUILTIN_CHAINS[table] for j in mine if j.chain == chain)


def format_ruleset(rs: Ruleset, cfg: NodeConfig, with_jumps: bool = True) -> str:
    """The complete ruleset text. with_jumps adds the built-in chain jumps (display and tracing);
    the dataplane ensures those separately, as kube-proxy does, so it passes False."""
    blocks = [b for bl in rs.services.values() for b in bl]
    filter_top = dict(rs.filter)
    extra: tuple[str, ...] = ()
    if with_jumps and n.KUBELET_FIREWALL not in filter_top:
        extra = (n.KUBELET_FIREWALL,)  # the jumps need the (empty) chain to exist
    return (format_table("filter", filter_top, None, extra,
                         builtin_jump_lines("filter", cfg) if with_jumps else "")
            + format_table("nat", rs.nat, blocks, (), builtin_jump_lines("nat", cfg) if with_jumps else ""))


_DEFAULT_CACHE = BlockCache()


def render_ruleset(state: ProxyState, cfg: NodeConfig) -> str:
    """Complete iptables-restore input (filter and nat tables) for this node, kube-proxy's layout."""
    return format_ruleset(build_ruleset(state, cfg, _DEFAULT_CACHE), cfg)
