"""One service port's share of the iptables ruleset, as kube-proxy's syncProxyRules writes it.

`port_block` is a pure function of (service port, its endpoints, RenderContext). Its result is
cached by value (see BlockCache), so a sync re-renders only the services that changed; the
assembly into a whole ruleset lives in render.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ...model.selection import categorize
from ...state import EndpointInfo, ServicePortInfo
from . import names as n


@dataclass(frozen=True, slots=True)
class RenderContext:
    """The node-wide inputs a service port's rules depend on (besides the port itself)."""

    family: int
    hostname: str
    zone: str
    masquerade_all: bool
    local_cidr: str  # pod CIDR of this family; "" = kube-proxy's no-op local detector
    node_ip: str  # primary node IP, for loadBalancerSourceRanges that cover the node
    large_cluster: bool  # > 1000 endpoints: drop per-endpoint comments, as kube-proxy does


@dataclass(frozen=True, slots=True)
class PortBlock:
    """Rule lines ("\\n"-terminated) a service port adds to shared chains, plus its own nat chains."""

    nat_services: str = ""  # nat KUBE-SERVICES
    nat_nodeports: str = ""  # nat KUBE-NODEPORTS
    filter_services: str = ""  # filter KUBE-SERVICES (REJECT/DROP when no endpoints)
    filter_external: str = ""  # filter KUBE-EXTERNAL-SERVICES
    filter_nodeports: str = ""  # filter KUBE-NODEPORTS (health check node port)
    filter_firewall: str = ""  # filter KUBE-PROXY-FIREWALL
    chains: tuple[str, ...] = ()  # this port's own nat chains (EXT, FW, SVC, SVL, SEP...)
    chain_rules: tuple[str, ...] = ()  # the rules of each chain in `chains`
    nat_rule_count: int = 0  # rules in chain_rules, for metrics

    @property
    def decls(self) -> str:
        return "".join([f":{c} - [0:0]\n" for c in self.chains])


@lru_cache(maxsize=4096)
def probability(count: int) -> str:
    """kube-proxy's computeProbability: 1/n with ten decimals (iptables-save shows the kernel's
    rounded value, e.g. 0.33333333349 for 0.3333333333)."""
    return f"{1.0 / count:0.10f}"


def _endpoint(ep: EndpointInfo) -> str:
    return f"[{ep.ip}]:{ep.port}" if ":" in ep.ip else f"{ep.ip}:{ep.port}"


def port_block(port: ServicePortInfo, endpoints: tuple[EndpointInfo, ...], ctx: RenderContext) -> PortBlock:
    """Everything one service port contributes, following kube-proxy's syncProxyRules step by step."""
    sel = categorize(endpoints, port.uses_cluster_endpoints, port.uses_local_endpoints, ctx.hostname, ctx.zone)
    name = str(port.name)
    proto = port.protocol.lower()
    pmatch = f"-m {proto} -p {proto}"
    svc_chain, svl_chain, ext_chain, fw_chain = n.service_chains(name, port.protocol)
    has_endpoints = sel.has_any
    uses_cluster_chain = bool(sel.cluster) and port.uses_cluster_endpoints
    uses_local_chain = bool(sel.local) and port.uses_local_endpoints

    internal_chain, has_internal = svc_chain, has_endpoints
    if port.internal_policy_local:
        internal_chain, has_internal = svl_chain, has_internal and bool(sel.local)
    external_policy_chain, has_external = svc_chain, has_endpoints
    if port.external_policy_local:
        external_policy_chain, has_external = svl_chain, has_external and bool(sel.local)
    uses_ext_chain = has_endpoints and port.externally_accessible
    uses_fw = has_endpoints and bool(port.load_balancer_ips) and bool(port.load_balancer_source_ranges)
    lb_chain = fw_chain if uses_fw else ext_chain

    if not has_endpoints:
        int_target = ext_target = "REJECT"
        int_comment = ext_comment = f'"{name} has no endpoints"'
    else:
        int_target = ext_target = "DROP"
        int_comment = ext_comment = f'"{name} has no local endpoints"'

    # Rules in the shared top-level chains.
    cluster_match = f'-m comment --comment "{name} cluster IP" {pmatch} -d {port.cluster_ip} --dport {port.port}'
    nat_services: list[str] = []
    filter_services = filter_external = filter_firewall = nat_nodeports = filter_nodeports = ""
    if has_internal:
        nat_services.append(f"-A {n.SERVICES} {cluster_match} -j {internal_chain}\n")
    else:
        filter_services = (f"-A {n.SERVICES} -m comment --comment {int_comment} {pmatch} "
                           f"-d {port.cluster_ip} --dport {port.port} -j {int_target}\n")
    ext_lines: list[str] = []
    for ip in port.external_ips:
        if has_endpoints:
            nat_services.append(f'-A {n.SERVICES} -m comment --comment "{name} external IP" {pmatch} '
                                f"-d {ip} --dport {port.port} -j {ext_chain}\n")
        if not has_external:
            ext_lines.append(f"-A {n.EXTERNAL_SERVICES} -m comment --comment {ext_comment} {pmatch} "
                             f"-d {ip} --dport {port.port} -j {ext_target}\n")
    fw_lines: list[str] = []
    for ip in port.load_balancer_ips:
        if has_endpoints:
            nat_services.append(f'-A {n.SERVICES} -m comment --comment "{name} loadbalancer IP" {pmatch} '
                                f"-d {ip} --dport {port.port} -j {lb_chain}\n")
        if uses_fw:
            fw_lines.append(f'-A {n.PROXY_FIREWALL} -m comment --comment "{name} traffic not accepted by '
                            f'{fw_chain}" {pmatch} -d {ip} --dport {port.port} -j DROP\n')
    if not has_external:
        for ip in port.load_balancer_ips:
            ext_lines.append(f"-A {n.EXTERNAL_SERVICES} -m comment --comment {ext_comment} {pmatch} "
                             f"-d {ip} --dport {port.port} -j {ext_target}\n")
    if port.node_port:
        if has_endpoints:
            nat_nodeports = (f"-A {n.NODEPORTS} -m comment --comment {name} {pmatch} "
                             f"--dport {port.node_port} -j {ext_chain}\n")
        if not has_external:
            ext_lines.append(f"-A {n.EXTERNAL_SERVICES} -m comment --comment {ext_comment} "
                             f"-m addrtype --dst-type LOCAL {pmatch} --dport {port.node_port} -j {ext_target}\n")
    if port.health_check_node_port:
        filter_nodeports = (f'-A {n.NODEPORTS} -m comment --comment "{name} health check node port" '
                            f"-m tcp -p tcp --dport {port.health_check_node_port} -j ACCEPT\n")
    filter_external = "".join(ext_lines)
    filter_firewall = "".join(fw_lines)

    # This port's own nat chains, in kube-proxy's order: EXT, FW, SVC, SVL, then one SEP per endpoint.
    rules: dict[str, list[str]] = {}
    if has_internal:
        if ctx.masquerade_all:
            rules[internal_chain] = [f"-A {internal_chain} {cluster_match} -j {n.MARK_MASQ}\n"]
        elif ctx.local_cidr:
            rules[internal_chain] = [f"-A {internal_chain} {cluster_match} ! -s {ctx.local_cidr} -j {n.MARK_MASQ}\n"]
    chains: list[str] = []
    if uses_ext_chain:
        chains.append(ext_chain)
        rules[ext_chain] = _ext_rules(port, name, ext_chain, svc_chain,
                                      external_policy_chain if has_external else "", ctx)
    if uses_fw:
        chains.append(fw_chain)
        rules[fw_chain] = _fw_rules(port, name, fw_chain, ext_chain, ctx)

    eps = sel.all_reachable
    ep_strs = {id(ep): _endpoint(ep) for ep in eps}
    sep_names = dict(zip(ep_strs, n.endpoint_chains(name, proto, list(ep_strs.values())), strict=True))
    if uses_cluster_chain:
        chains.append(svc_chain)
        rules.setdefault(svc_chain, []).extend(_dispatch(svc_chain, name, port, sel.cluster, sep_names, ep_strs, ctx))
    if uses_local_chain:
        chains.append(svl_chain)
        rules.setdefault(svl_chain, []).extend(_dispatch(svl_chain, name, port, sel.local, sep_names, ep_strs, ctx))
    chain_rules = ["".join(rules.get(c, ())) for c in chains]
    nat_rule_count = sum([len(rules.get(c, ())) for c in chains]) + 2 * len(eps)
    comment = "" if ctx.large_cluster else f" -m comment --comment {name}"
    affinity = bool(port.session_affinity_timeout)
    for ep in eps:
        sep = sep_names[id(ep)]
        chains.append(sep)
        recent = f" -m recent --name {sep} --set" if affinity else ""
        chain_rules.append(f"-A {sep}{comment} -s {ep.ip} -j {n.MARK_MASQ}\n"
                           f"-A {sep}{comment}{recent} {pmatch} -j DNAT --to-destination {ep_strs[id(ep)]}\n")

    return PortBlock(
        nat_services="".join(nat_services), nat_nodeports=nat_nodeports, filter_services=filter_services,
        filter_external=filter_external, filter_nodeports=filter_nodeports, filter_firewall=filter_firewall,
        chains=tuple(chains), chain_rules=tuple(chain_rules), nat_rule_count=nat_rule_count,
    )


def _ext_rules(port: ServicePortInfo, name: str, ext_chain: str, svc_chain: str, policy_chain: str,
               ctx: RenderContext) -> list[str]:
    """KUBE-EXT: masquerade (Cluster policy) or keep the client address (Local policy) while
    short-circuiting pod and node traffic to the cluster-wide chain; then the policy chain."""
    if not port.external_policy_local:
        out = [f'-A {ext_chain} -m comment --comment "masquerade traffic for {name} external destinations" '
               f"-j {n.MARK_MASQ}\n"]
    else:
        out = []
        if ctx.local_cidr:
            out.append(f'-A {ext_chain} -m comment --comment "pod traffic for {name} external destinations" '
                       f"-s {ctx.local_cidr} -j {svc_chain}\n")
        out.append(f'-A {ext_chain} -m comment --comment "masquerade LOCAL traffic for {name} external '
                   f'destinations" -m addrtype --src-type LOCAL -j {n.MARK_MASQ}\n')
        out.append(f'-A {ext_chain} -m comment --comment "route LOCAL traffic for {name} external '
                   f'destinations" -m addrtype --src-type LOCAL -j {svc_chain}\n')
    if policy_chain:  # "" when Local policy has no local endpoint: what falls through is dropped
        out.append(f"-A {ext_chain} -j {policy_chain}\n")
    return out


def _fw_rules(port: ServicePortInfo, name: str, fw_chain: str, ext_chain: str, ctx: RenderContext) -> list[str]:
    """KUBE-FW: loadBalancerSourceRanges let traffic on to KUBE-EXT; the rest falls through and is
    dropped by KUBE-PROXY-FIREWALL in the filter table (it was not DNATed)."""
    head = f'-A {fw_chain} -m comment --comment "{name} loadbalancer IP"'
    out = [f"{head} -s {cidr} -j {ext_chain}\n" for cidr in port.load_balancer_source_ranges]
    if any(_contains(cidr, ctx.node_ip) for cidr in port.load_balancer_source_ranges):
        # The node itself is allowed: its packets to the LB IP loop back with the LB IP as source.
        out += [f"{head} -s {ip} -j {ext_chain}\n" for ip in port.load_balancer_ips]
    out.append(f'-A {fw_chain} -m comment --comment "other traffic to {name} will be dropped by '
               f'{n.PROXY_FIREWALL}"\n')
    return out


def _dispatch(chain: str, name: str, port: ServicePortInfo, endpoints: tuple[EndpointInfo, ...],
              sep_names: dict[int, str], ep_strs: dict[int, str], ctx: RenderContext) -> list[str]:
    """kube-proxy's writeServiceToEndpointRules: affinity checks first, then a random pick
    with probabilities 1/n, 1/(n-1), ... so that every endpoint gets an equal share."""
    out: list[str] = []
    big = ctx.large_cluster
    if port.session_affinity_timeout:
        for ep in endpoints:
            sep = sep_names[id(ep)]
            comment = "" if big else f' -m comment --comment "{name} -> {ep_strs[id(ep)]}"'
            out.append(f"-A {chain}{comment} -m recent --name {sep} --rcheck "
                       f"--seconds {port.session_affinity_timeout} --reap -j {sep}\n")
    count = len(endpoints)
    for i, ep in enumerate(endpoints):
        comment = "" if big else f' -m comment --comment "{name} -> {ep_strs[id(ep)]}"'
        stat = f" -m statistic --mode random --probability {probability(count - i)}" if i < count - 1 else ""
        out.append(f"-A {chain}{comment}{stat} -j {sep_names[id(ep)]}\n")
    return out


@lru_cache(maxsize=1024)
def _contains(cidr: str, ip: str) -> bool:
    import ipaddress

    if not ip:
        return False
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
