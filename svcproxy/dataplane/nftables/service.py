"""What one service port contributes to the kube-proxy table: its chains, affinity sets and
map elements. A pure function of (port, endpoints, node config, zone), so it is cached.

Follows kube-proxy's nftables syncProxyRules: traffic to the ClusterIP goes to the internal
policy chain (service-* or local-*), external traffic (NodePort, externalIPs, LB IPs) to
external-*, which masquerades or short-circuits and then goes to the external policy chain.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...config import NodeConfig
from ...state import EndpointInfo, ServicePortInfo, select_endpoints
from . import names
from .layout import (
    CLUSTER_IPS,
    FIREWALL_IPS,
    MARK_MASQ,
    NO_ENDPOINT_NODEPORTS,
    NO_ENDPOINT_SERVICES,
    REJECT_CHAIN,
    SERVICE_IPS,
    SERVICE_NODEPORTS,
    Chain,
    Container,
    addr_type,
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


def local_match(cfg: NodeConfig, negate: bool) -> str:
    """kube-proxy's cluster-CIDR local-traffic detector ("" when no --cluster-cidr is given)."""
    cidrs = cfg.family_cluster_cidrs
    if not cidrs:
        return ""
    ip = names.family_keyword(cfg.ip_family)
    target = cidrs[0] if len(cidrs) == 1 else "{ " + ", ".join(cidrs) + " }"
    return f"{ip} saddr {'!= ' if negate else ''}{target}"


def endpoint_target(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def service_block(port: ServicePortInfo, endpoints: tuple[EndpointInfo, ...], cfg: NodeConfig,
                  zone: str) -> Block:
    sel = select_endpoints(port, endpoints, cfg, zone)
    ip = names.family_keyword(cfg.ip_family)
    proto = port.protocol.lower()
    spn = port.name
    label = str(spn)
    base = names.port_base(spn)
    cluster_chain = names.SERVICE + base
    local_chain = names.LOCAL + base
    external_chain = names.EXTERNAL + base
    firewall_chain = names.FIREWALL + base
    affinity = port.session_affinity_timeout

    ep_names: dict[tuple[str, int], str] = {}

    def ep_base(ep: EndpointInfo) -> str:
        key = (ep.ip, ep.port)
        name = ep_names.get(key)
        if name is None:
            name = ep_names[key] = names.endpoint_base(spn, ep.ip, ep.port)
        return name

    has_endpoints = sel.has_any
    uses_cluster = bool(sel.cluster) and port.uses_cluster_endpoints
    uses_local = bool(sel.local) and port.uses_local_endpoints
    internal_chain, has_internal = cluster_chain, has_endpoints
    if port.internal_policy_local:
        internal_chain, has_internal = local_chain, bool(sel.local)
    external_policy_chain, has_external = cluster_chain, has_endpoints
    if port.external_policy_local:
        external_policy_chain, has_external = local_chain, bool(sel.local)
    uses_external = has_endpoints and port.externally_accessible

    if not has_endpoints:
        internal_verdict = external_verdict = f"goto {REJECT_CHAIN}"
    else:
        internal_verdict = "" if has_internal else "drop"
        external_verdict = "" if has_external else "drop"

    elements: list[Element] = [Element(CLUSTER_IPS, port.cluster_ip)]

    def key(addr: str) -> str:
        return f"{addr} . {proto} . {port.port}"

    if has_internal:
        elements.append(Element(SERVICE_IPS, key(port.cluster_ip), f"goto {internal_chain}"))
    else:
        elements.append(Element(NO_ENDPOINT_SERVICES, key(port.cluster_ip), internal_verdict, label))
    for ext in port.external_ips:
        if has_endpoints:
            elements.append(Element(SERVICE_IPS, key(ext), f"goto {external_chain}"))
        if not has_external:
            elements.append(Element(NO_ENDPOINT_SERVICES, key(ext), external_verdict, label))
    uses_firewall = bool(port.load_balancer_ips and port.load_balancer_source_ranges)
    for lb in port.load_balancer_ips:
        if has_endpoints:
            elements.append(Element(SERVICE_IPS, key(lb), f"goto {external_chain}"))
        if uses_firewall:
            elements.append(Element(FIREWALL_IPS, key(lb), f"goto {firewall_chain}"))
    if not has_external:
        for lb in port.load_balancer_ips:
            elements.append(Element(NO_ENDPOINT_SERVICES, key(lb), external_verdict, label))
    if port.node_port:
        np_key = f"{proto} . {port.node_port}"
        if has_endpoints:
            elements.append(Element(SERVICE_NODEPORTS, np_key, f"goto {external_chain}"))
        if not has_external:
            elements.append(Element(NO_ENDPOINT_NODEPORTS, np_key, external_verdict, label))

    chains: list[Chain] = []

    def policy_chain(name: str, eps: tuple[EndpointInfo, ...]) -> Chain:
        rules: list[str] = []
        if name == internal_chain and has_internal:
            if cfg.masquerade_all:
                rules.append(f"{ip} daddr {port.cluster_ip} {proto} dport {port.port} jump {MARK_MASQ}")
            elif (not_local := local_match(cfg, negate=True)):
                rules.append(f"{ip} daddr {port.cluster_ip} {proto} dport {port.port} {not_local} jump {MARK_MASQ}")
        if affinity:
            rules += [f"{ip} saddr @{names.AFFINITY}{ep_base(ep)} goto {names.ENDPOINT}{ep_base(ep)}" for ep in eps]
        vmap = ", ".join(f"{i} : goto {names.ENDPOINT}{ep_base(ep)}" for i, ep in enumerate(eps))
        rules.append(f"numgen random mod {len(eps)} vmap {{ {vmap} }}")
        return Chain(name, tuple(rules))

    if uses_cluster:
        chains.append(policy_chain(cluster_chain, sel.cluster))
    if uses_local:
        chains.append(policy_chain(local_chain, sel.local))
    if uses_external:
        rules = []
        if not port.external_policy_local:
            rules.append(f"jump {MARK_MASQ}")
        else:
            if (is_local := local_match(cfg, negate=False)):
                rules.append(f'{is_local} goto {cluster_chain} comment "short-circuit pod traffic"')
            rules.append(f'fib saddr type local jump {MARK_MASQ} comment "masquerade local traffic"')
            rules.append(f'fib saddr type local goto {cluster_chain} comment "short-circuit local traffic"')
        if has_external:
            rules.append(f"goto {external_policy_chain}")
        chains.append(Chain(external_chain, tuple(rules)))
    if uses_firewall:
        sources = list(port.load_balancer_source_ranges)
        if cfg.primary_ip and any_contains(sources, cfg.primary_ip):
            sources += port.load_balancer_ips
        chains.append(Chain(firewall_chain, (f"{ip} saddr != {{ {', '.join(sources)} }} drop",)))

    sets: list[Container] = []
    for ep in sel.all_reachable:
        b = ep_base(ep)
        rules = [f"{ip} saddr {ep.ip} jump {MARK_MASQ}"]
        if affinity:
            sets.append(Container(names.AFFINITY + b, addr_type(cfg), flags="dynamic,timeout", timeout=affinity))
            rules.append(f"update @{names.AFFINITY}{b} {{ {ip} saddr }}")
        rules.append(f"meta l4proto {proto} dnat to {endpoint_target(ep.ip, ep.port)}")
        chains.append(Chain(names.ENDPOINT + b, tuple(rules)))
    return Block(tuple(chains), tuple(sets), tuple(elements))


def any_contains(cidrs: list[str], ip: str) -> bool:
    import ipaddress

    addr = ipaddress.ip_address(ip)
    return any(addr in ipaddress.ip_network(c, strict=False) for c in cidrs)
