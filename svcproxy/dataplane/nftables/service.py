"""What one service port contributes to the kube-proxy table: its chains, affinity sets and
map elements. A pure function of (port, endpoints, node config, zone), so it is cached.

Follows kube-proxy's nftables syncProxyRules: traffic to the ClusterIP goes to the internal
policy chain (service-* or local-*), external traffic (NodePort, externalIPs, LB IPs) to
external-*, which masquerades or short-circuits and then goes to the external policy chain.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...config import NodeConfig
from ...model.selection import Policy, port_policy
from ...state import EndpointInfo, ServicePortInfo
from . import names
from .layout import (
    CLUSTER_IPS,
    FIREWALL_IPS,
    HAIRPIN_CONNECTIONS,
    MARK_MASQ,
    NO_ENDPOINT_NODEPORTS,
    NO_ENDPOINT_SERVICES,
    REJECT_CHAIN,
    SERVICE_IPS,
    SERVICE_NODEPORTS,
    Chain,
    Container,
    addr_type,
    local_match,
    masquerade_statement,
)


@dataclass(frozen=True, slots=True)
class Element:
    """One set/map element: key, verdict ("" for sets) and an optional comment."""

    container: str
    key: str
    value: str = ""
    comment: str = ""


@dataclass(frozen=True, slots=True)
class Block:
    """One service port's share of the table, in the order it is written."""

    chains: tuple[Chain, ...]
    sets: tuple[Container, ...]  # per-endpoint affinity sets
    elements: tuple[Element, ...]


def endpoint_target(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True, slots=True)
class PortChains:
    """The names of one service port's chains (both layouts), from its name."""

    cluster: str  # service-*: spreads over the cluster-wide endpoints
    local: str  # local-*: over this node's endpoints
    external: str  # external-*: where NodePort, external and LB IP traffic enters
    firewall: str  # firewall-*: loadBalancerSourceRanges

    @classmethod
    def of(cls, port: ServicePortInfo) -> PortChains:
        base = names.port_base(port.name)
        return cls(names.SERVICE + base, names.LOCAL + base, names.EXTERNAL + base, names.FIREWALL + base)

    def internal(self, port: ServicePortInfo) -> str:
        """Where ClusterIP traffic goes: the internal traffic policy's chain."""
        return self.local if port.internal_policy_local else self.cluster

    def external_policy(self, port: ServicePortInfo) -> str:
        """Where external traffic goes after external-*: the external traffic policy's chain."""
        return self.local if port.external_policy_local else self.cluster


def uses_firewall(port: ServicePortInfo) -> bool:
    """kube-proxy's nftables mode checks source ranges before it looks for endpoints."""
    return bool(port.load_balancer_ips and port.load_balancer_source_ranges)


def internal_masquerade(port: ServicePortInfo, cfg: NodeConfig) -> list[str]:
    """The internal policy chain's first rule: masquerade ClusterIP traffic from outside the
    pod network (or all of it with --masquerade-all)."""
    ip = names.family_keyword(cfg.ip_family)
    dest = f"{ip} daddr {port.cluster_ip} {port.protocol.lower()} dport {port.port}"
    if cfg.masquerade_all:
        return [f"{dest} jump {MARK_MASQ}"]
    if (not_local := local_match(cfg, negate=True)):
        return [f"{dest} {not_local} jump {MARK_MASQ}"]
    return []


def external_rules(port: ServicePortInfo, cfg: NodeConfig, chains: PortChains) -> list[str]:
    """external-*: masquerade (Cluster policy), or keep the client address (Local policy) while
    short-circuiting pod and node traffic to the cluster-wide chain. The goto to the policy
    chain is the caller's (the kube-proxy layout leaves it out when there is nowhere to go).
    kube-proxy 1.36 sets the mark inline (with a comment); the maps layout jumps to its chain."""
    masq = masquerade_statement(cfg)
    if not port.external_policy_local:
        return [masq if cfg.nftables_layout == "maps" else f'{masq} comment "masquerade"']
    rules = []
    if (is_local := local_match(cfg, negate=False)):
        rules.append(f'{is_local} goto {chains.cluster} comment "short-circuit pod traffic"')
    rules.append(f'fib saddr type local {masq} comment "masquerade local traffic"')
    rules.append(f'fib saddr type local goto {chains.cluster} comment "short-circuit local traffic"')
    return rules


def firewall_chain(port: ServicePortInfo, cfg: NodeConfig, chains: PortChains) -> Chain:
    """firewall-*: drop what no loadBalancerSourceRange allows; the node itself is allowed
    when a range covers it (its packets to the LB IP come back with the LB IP as source)."""
    sources = list(port.load_balancer_source_ranges)
    if cfg.primary_ip and any_contains(sources, cfg.primary_ip):
        sources += port.load_balancer_ips
    ip = names.family_keyword(cfg.ip_family)
    return Chain(chains.firewall, (f"{ip} saddr != {{ {', '.join(sources)} }} drop",))


def service_block(port: ServicePortInfo, endpoints: tuple[EndpointInfo, ...], cfg: NodeConfig,
                  zone: str) -> Block:
    """kube-proxy 1.36's layout: map elements send each address to the port's chains, which
    DNAT through a numgen map (per-endpoint chains only for ClientIP affinity). The maps
    layout falls back to this for affinity it cannot map, in the older shape it always had
    (masquerade in the service chain, hairpin in the endpoint chains: see older_shape)."""
    pol = port_policy(port, endpoints, cfg.hostname, zone)
    chains = PortChains.of(port)
    older = older_shape(cfg)
    bases = ({(ep.ip, ep.port): names.endpoint_base(port.name, ep.ip, ep.port) for ep in pol.selection.all_reachable}
             if port.session_affinity_timeout else {})
    masq = tuple(internal_masquerade(port, cfg)) if older and pol.has_internal else ()
    out: list[Chain] = []
    if pol.uses_cluster_chain:
        first = masq if chains.internal(port) == chains.cluster else ()
        out.append(_policy_chain(port, chains.cluster, pol.selection.cluster, bases, cfg, first))
    if pol.uses_local_chain:
        first = masq if chains.internal(port) == chains.local else ()
        out.append(_policy_chain(port, chains.local, pol.selection.local, bases, cfg, first))
    if pol.uses_external_chain:
        rules = external_rules(port, cfg, chains)
        if pol.has_external:
            rules.append(f"goto {chains.external_policy(port)}")
        out.append(Chain(chains.external, tuple(rules)))
    endpoint_chains, sets = _affinity_chains(port, pol, bases, cfg)
    fw = (firewall_chain(port, cfg, chains),) if uses_firewall(port) else ()
    out_chains = (*out, *fw, *endpoint_chains) if older else (*out, *endpoint_chains, *fw)
    hairpin = () if older else _hairpin_elements(port, pol)
    return Block(out_chains, sets, (*_elements(port, pol, chains), *hairpin))


def older_shape(cfg: NodeConfig) -> bool:
    """The maps layout's affinity fallback keeps the pre-1.36 shape: the ClusterIP masquerade
    per port and a hairpin rule in each endpoint chain (its fixed chains have no
    @hairpin-connections and no ClusterIP masquerade in "services")."""
    return cfg.nftables_layout == "maps"


def _hairpin_elements(port: ServicePortInfo, pol: Policy[EndpointInfo]) -> list[Element]:
    """@hairpin-connections: a local endpoint reaching itself through the service (after
    DNAT: source and destination both the endpoint) is masqueraded so the reply comes back
    through the node's conntrack. Several services may claim one element (refcounted)."""
    proto = port.protocol.lower()
    return [Element(HAIRPIN_CONNECTIONS, f"{ep.ip} . {ep.ip} . {proto} . {ep.port}")
            for ep in pol.selection.all_reachable if ep.is_local]


def _elements(port: ServicePortInfo, pol: Policy[EndpointInfo], chains: PortChains) -> tuple[Element, ...]:
    """The port's map elements: its addresses to its chains, or, without endpoints under a
    policy, to the no-endpoint verdicts (reject when there are none at all, else drop)."""
    proto = port.protocol.lower()
    label = str(port.name)
    if not pol.has_endpoints:
        internal_verdict = external_verdict = f"goto {REJECT_CHAIN}"
    else:
        internal_verdict = "" if pol.has_internal else "drop"
        external_verdict = "" if pol.has_external else "drop"

    def key(addr: str) -> str:
        return f"{addr} . {proto} . {port.port}"

    out = [Element(CLUSTER_IPS, port.cluster_ip)]
    if pol.has_internal:
        out.append(Element(SERVICE_IPS, key(port.cluster_ip), f"goto {chains.internal(port)}"))
    else:
        out.append(Element(NO_ENDPOINT_SERVICES, key(port.cluster_ip), internal_verdict, label))
    for ext in port.external_ips:
        if pol.has_endpoints:
            out.append(Element(SERVICE_IPS, key(ext), f"goto {chains.external}"))
        if not pol.has_external:
            out.append(Element(NO_ENDPOINT_SERVICES, key(ext), external_verdict, label))
    for lb in port.load_balancer_ips:
        if pol.has_endpoints:
            out.append(Element(SERVICE_IPS, key(lb), f"goto {chains.external}"))
        if uses_firewall(port):
            out.append(Element(FIREWALL_IPS, key(lb), f"goto {chains.firewall}"))
    if not pol.has_external:
        out += [Element(NO_ENDPOINT_SERVICES, key(lb), external_verdict, label) for lb in port.load_balancer_ips]
    if port.node_port:
        np_key = f"{proto} . {port.node_port}"
        if pol.has_endpoints:
            out.append(Element(SERVICE_NODEPORTS, np_key, f"goto {chains.external}"))
        if not pol.has_external:
            out.append(Element(NO_ENDPOINT_NODEPORTS, np_key, external_verdict, label))
    return tuple(out)


def _policy_chain(port: ServicePortInfo, name: str, eps: tuple[EndpointInfo, ...],
                  bases: dict[tuple[str, int], str], cfg: NodeConfig, first: tuple[str, ...] = ()) -> Chain:
    """service-* or local-*: one DNAT through a numgen map (writeServiceToEndpointDNATs); with
    ClientIP affinity, a client seen before goes to its endpoint chain, others to a random
    one through a numgen vmap (writeServiceToEndpointJumps). first: older_shape's masquerade."""
    if not bases:
        return Chain(name, (*first, dnat_map_rule(port, eps, cfg)))
    ip = names.family_keyword(cfg.ip_family)
    rules = [*first]
    rules += [f"{ip} saddr @{names.AFFINITY}{bases[ep.ip, ep.port]} goto {names.ENDPOINT}{bases[ep.ip, ep.port]}"
              for ep in eps]
    vmap = ", ".join(f"{i} : goto {names.ENDPOINT}{bases[ep.ip, ep.port]}" for i, ep in enumerate(eps))
    rules.append(f"numgen random mod {len(eps)} vmap {{ {vmap} }}")
    return Chain(name, tuple(rules))


def dnat_map_rule(port: ServicePortInfo, eps: tuple[EndpointInfo, ...], cfg: NodeConfig) -> str:
    """`meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : a . 80, 1 : b . 80 }`,
    kube-proxy's text for the rule (nft lists it back as `dnat ip to numgen ...`)."""
    ip = names.family_keyword(cfg.ip_family)
    items = ", ".join(f"{i} : {ep.ip} . {ep.port}" for i, ep in enumerate(eps))
    return (f"meta l4proto {port.protocol.lower()} dnat {ip} addr . port to "
            f"numgen random mod {len(eps)} map {{ {items} }}")


def _affinity_chains(port: ServicePortInfo, pol: Policy[EndpointInfo], bases: dict[tuple[str, int], str],
                     cfg: NodeConfig) -> tuple[tuple[Chain, ...], tuple[Container, ...]]:
    """With ClientIP affinity only: one endpoint-* chain per reachable endpoint (remember the
    client, then DNAT) and its affinity set. Hairpin is @hairpin-connections' business."""
    if not bases:
        return (), ()
    ip = names.family_keyword(cfg.ip_family)
    proto = port.protocol.lower()
    chains: list[Chain] = []
    sets: list[Container] = []
    for ep in pol.selection.all_reachable:
        b = bases[ep.ip, ep.port]
        sets.append(Container(names.AFFINITY + b, addr_type(cfg), flags="dynamic,timeout",
                              timeout=port.session_affinity_timeout))
        hairpin = (f"{ip} saddr {ep.ip} jump {MARK_MASQ}",) if older_shape(cfg) else ()
        chains.append(Chain(names.ENDPOINT + b, (*hairpin, f"update @{names.AFFINITY}{b} {{ {ip} saddr }}",
                                                 f"meta l4proto {proto} dnat to {endpoint_target(ep.ip, ep.port)}")))
    return tuple(chains), tuple(sets)


def any_contains(cidrs: list[str], ip: str) -> bool:
    import ipaddress

    addr = ipaddress.ip_address(ip)
    return any(addr in ipaddress.ip_network(c, strict=False) for c in cidrs)
