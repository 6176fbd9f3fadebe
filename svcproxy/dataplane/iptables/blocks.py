"""One service port's share of the iptables ruleset, as kube-proxy's syncProxyRules writes it.

`port_block` is a pure function of (service port, its endpoints, RenderContext). Its result is
cached by value (see BlockCache), so a sync re-renders only the services that changed; the
assembly into a whole ruleset lives in render.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from ...model.selection import Policy, port_policy
from ...state import EndpointInfo, ServicePortInfo
from . import names as n


@dataclass(frozen=True, slots=True)
class RenderContext:
    """The node-wide inputs a service port's rules depend on (besides the port itself)."""

    family: int
    hostname: str
    zone: str
    masquerade_all: bool
    if_local: str  # the local detector's IfLocal (`-s CIDR`, `-i br0`, `-i veth+`); "" = no-op
    if_not_local: str  # its IfNotLocal (`! -s CIDR`, ...)
    node_ip: str  # primary node IP, for loadBalancerSourceRanges that cover the node
    large_cluster: bool  # > 1000 endpoints: drop per-endpoint comments, as kube-proxy does
    localhost_nfacct: bool = False  # count NodePort packets to 127.0.0.0/8 (nfacct object present)


LOCALHOST_NFACCT = "localhost_nps_accepted_pkts"  # kube-proxy's nfacct object names
INVALID_NFACCT = "ct_state_invalid_dropped_pkts"


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


class PortChains(NamedTuple):
    """One service port's nat chain names and the decisions that pick among them."""

    name: str  # the service port name, as in comments
    svc: str  # KUBE-SVC-: spreads over the cluster-wide endpoints
    svl: str  # KUBE-SVL-: over this node's endpoints
    ext: str  # KUBE-EXT-: where NodePort, external and LB IP traffic enters
    fw: str  # KUBE-FW-: loadBalancerSourceRanges
    internal: str  # where ClusterIP traffic goes (the internal policy's chain)
    external_policy: str  # where KUBE-EXT- goes on to (the external policy's chain)
    uses_fw: bool

    @classmethod
    def of(cls, port: ServicePortInfo, pol: Policy[EndpointInfo]) -> PortChains:
        name = str(port.name)
        svc, svl, ext, fw = n.service_chains(name, port.protocol)
        # iptables mode (unlike nftables) writes the firewall only for ports with endpoints
        uses_fw = pol.has_endpoints and bool(port.load_balancer_ips) and bool(port.load_balancer_source_ranges)
        return cls(name, svc, svl, ext, fw, svl if port.internal_policy_local else svc,
                   svl if port.external_policy_local else svc, uses_fw)


def port_block(port: ServicePortInfo, endpoints: tuple[EndpointInfo, ...], ctx: RenderContext) -> PortBlock:
    """Everything one service port contributes, following kube-proxy's syncProxyRules step by step."""
    pol = port_policy(port, endpoints, ctx.hostname, ctx.zone)
    c = PortChains.of(port, pol)
    chains, chain_rules, count = _own_chains(port, pol, c, ctx)
    return PortBlock(*_shared_rules(port, pol, c, ctx.localhost_nfacct), chains, chain_rules, count)


def _shared_rules(port: ServicePortInfo, pol: Policy[EndpointInfo], c: PortChains,
                  localhost_nfacct: bool = False) -> tuple[str, ...]:
    """The port's lines in the shared chains, in PortBlock's field order: nat KUBE-SERVICES and
    KUBE-NODEPORTS jump to its chains; filter KUBE-SERVICES / KUBE-EXTERNAL-SERVICES reject (no
    endpoints) or drop (no local ones for a Local policy); the health check node port;
    KUBE-PROXY-FIREWALL."""
    name, pmatch = c.name, f"-m {port.protocol.lower()} -p {port.protocol.lower()}"
    target, comment = ("DROP", f'"{name} has no local endpoints"') if pol.has_endpoints else \
        ("REJECT", f'"{name} has no endpoints"')
    lb_chain = c.fw if c.uses_fw else c.ext
    nat_nodeports = filter_services = filter_nodeports = ""
    nat: list[str] = []
    ext: list[str] = []
    if pol.has_internal:
        nat.append(f'-A {n.SERVICES} -m comment --comment "{name} cluster IP" {pmatch} -d {port.cluster_ip} '
                   f"--dport {port.port} -j {c.internal}\n")
    else:
        filter_services = (f"-A {n.SERVICES} -m comment --comment {comment} {pmatch} "
                           f"-d {port.cluster_ip} --dport {port.port} -j {target}\n")
    for ip in port.external_ips:
        if pol.has_endpoints:
            nat.append(f'-A {n.SERVICES} -m comment --comment "{name} external IP" {pmatch} '
                       f"-d {ip} --dport {port.port} -j {c.ext}\n")
        if not pol.has_external:
            ext.append(f"-A {n.EXTERNAL_SERVICES} -m comment --comment {comment} {pmatch} "
                       f"-d {ip} --dport {port.port} -j {target}\n")
    for ip in port.load_balancer_ips if pol.has_endpoints else ():
        nat.append(f'-A {n.SERVICES} -m comment --comment "{name} loadbalancer IP" {pmatch} '
                   f"-d {ip} --dport {port.port} -j {lb_chain}\n")
    filter_firewall = "".join(
        f'-A {n.PROXY_FIREWALL} -m comment --comment "{name} traffic not accepted by {c.fw}" {pmatch} '
        f"-d {ip} --dport {port.port} -j DROP\n" for ip in (port.load_balancer_ips if c.uses_fw else ()))
    if not pol.has_external:
        ext += [f"-A {n.EXTERNAL_SERVICES} -m comment --comment {comment} {pmatch} "
                f"-d {ip} --dport {port.port} -j {target}\n" for ip in port.load_balancer_ips]
    if port.node_port:
        if pol.has_endpoints:
            # kube-proxy counts localhost NodePort packets first, in a rule of their own
            counted = (f"-A {n.NODEPORTS} -m comment --comment {name} {pmatch} -d 127.0.0.0/8 "
                       f"--dport {port.node_port} -m nfacct --nfacct-name {LOCALHOST_NFACCT} -j {c.ext}\n")
            nat_nodeports = ((counted if localhost_nfacct else "") +
                             f"-A {n.NODEPORTS} -m comment --comment {name} {pmatch} "
                             f"--dport {port.node_port} -j {c.ext}\n")
        if not pol.has_external:
            ext.append(f"-A {n.EXTERNAL_SERVICES} -m comment --comment {comment} "
                       f"-m addrtype --dst-type LOCAL {pmatch} --dport {port.node_port} -j {target}\n")
    if port.health_check_node_port:
        filter_nodeports = (f'-A {n.NODEPORTS} -m comment --comment "{name} health check node port" '
                            f"-m tcp -p tcp --dport {port.health_check_node_port} -j ACCEPT\n")
    return "".join(nat), nat_nodeports, filter_services, "".join(ext), filter_nodeports, filter_firewall


def _own_chains(port: ServicePortInfo, pol: Policy[EndpointInfo], c: PortChains,
                ctx: RenderContext) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    """The port's own nat chains in kube-proxy's order (EXT, FW, SVC, SVL, then one SEP per
    endpoint), their rules, and how many rules that is (for metrics)."""
    proto = port.protocol.lower()
    pmatch = f"-m {proto} -p {proto}"
    rules: dict[str, list[str]] = {}
    if pol.has_internal and (ctx.masquerade_all or ctx.if_not_local):
        not_local = "" if ctx.masquerade_all else f" {ctx.if_not_local}"
        rules[c.internal] = [f'-A {c.internal} -m comment --comment "{c.name} cluster IP" {pmatch} '
                             f"-d {port.cluster_ip} --dport {port.port}{not_local} -j {n.MARK_MASQ}\n"]
    chains: list[str] = []
    if pol.uses_external_chain:
        chains.append(c.ext)
        rules[c.ext] = _ext_rules(port, c.name, c.ext, c.svc, c.external_policy if pol.has_external else "", ctx)
    if c.uses_fw:
        chains.append(c.fw)
        rules[c.fw] = _fw_rules(port, c.name, c.fw, c.ext, ctx)
    eps = pol.selection.all_reachable
    ep_strs = {id(ep): _endpoint(ep) for ep in eps}
    sep_names = dict(zip(ep_strs, n.endpoint_chains(c.name, proto, list(ep_strs.values())), strict=True))
    if pol.uses_cluster_chain:
        chains.append(c.svc)
        rules.setdefault(c.svc, []).extend(_dispatch(c.svc, c.name, port, pol.selection.cluster, sep_names, ep_strs, ctx))
    if pol.uses_local_chain:
        chains.append(c.svl)
        rules.setdefault(c.svl, []).extend(_dispatch(c.svl, c.name, port, pol.selection.local, sep_names, ep_strs, ctx))
    chain_rules = ["".join(rules.get(ch, ())) for ch in chains]
    count = sum([len(rules.get(ch, ())) for ch in chains]) + 2 * len(eps)
    comment = "" if ctx.large_cluster else f" -m comment --comment {c.name}"
    for ep in eps:
        sep = sep_names[id(ep)]
        chains.append(sep)
        recent = f" -m recent --name {sep} --set" if port.session_affinity_timeout else ""
        chain_rules.append(f"-A {sep}{comment} -s {ep.ip} -j {n.MARK_MASQ}\n"
                           f"-A {sep}{comment}{recent} {pmatch} -j DNAT --to-destination {ep_strs[id(ep)]}\n")
    return tuple(chains), tuple(chain_rules), count


def _ext_rules(port: ServicePortInfo, name: str, ext_chain: str, svc_chain: str, policy_chain: str,
               ctx: RenderContext) -> list[str]:
    """KUBE-EXT: masquerade (Cluster policy) or keep the client address (Local policy) while
    short-circuiting pod and node traffic to the cluster-wide chain; then the policy chain."""
    if not port.external_policy_local:
        out = [f'-A {ext_chain} -m comment --comment "masquerade traffic for {name} external destinations" '
               f"-j {n.MARK_MASQ}\n"]
    else:
        out = []
        if ctx.if_local:
            out.append(f'-A {ext_chain} -m comment --comment "pod traffic for {name} external destinations" '
                       f"{ctx.if_local} -j {svc_chain}\n")
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
