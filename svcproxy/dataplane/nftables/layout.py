"""The fixed part of the kube-proxy table: base chains, top-level chains, sets and maps.

Mirrors kube-proxy's nftables mode (setupNFTables): filter chains run before DNAT so they see
the service address; nat chains jump to "services", which dispatches through verdict maps.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import NamedTuple

from ...config import NodeConfig
from ...localdetect import local_detector
from .names import family_keyword

TABLE_COMMENT = "rules for kube-proxy"

# chain names
FILTER_PREROUTING_PRE_DNAT = "filter-prerouting-pre-dnat"
FILTER_INPUT = "filter-input"
FILTER_FORWARD = "filter-forward"
FILTER_OUTPUT = "filter-output"
FILTER_OUTPUT_PRE_DNAT = "filter-output-pre-dnat"
NAT_PREROUTING = "nat-prerouting"
NAT_OUTPUT = "nat-output"
NAT_POSTROUTING = "nat-postrouting"
SERVICES = "services"
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
REJECT_CHAIN = "reject-chain"
CLUSTER_IPS_CHECK = "cluster-ips-check"
FIREWALL_CHECK = "firewall-check"
MARK_MASQ = "mark-for-masquerade"
MASQUERADING = "masquerading"

# set and map names
CLUSTER_IPS = "cluster-ips"
NODEPORT_IPS = "nodeport-ips"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
FIREWALL_IPS = "firewall-ips"
HAIRPIN_CONNECTIONS = "hairpin-connections"  # kube-proxy 1.36: endpoint . endpoint . proto . port
# the maps layout's fixed sets: no-endpoint verdicts as data, and hairpin pairs
REJECT_SERVICES = "reject-services"
REJECT_NODEPORTS = "reject-nodeports"
DROP_SERVICES = "drop-services"
DROP_NODEPORTS = "drop-nodeports"
HAIRPIN = "hairpin-endpoints"
# (not "affinity-...": that prefix is the kube-proxy layout's per-endpoint affinity sets)
AFFINITY_SERVICES = "sticky-services"
AFFINITY_NODEPORTS = "sticky-nodeports"
AFFINITY_RECORD = "remember-endpoint"
PROTOCOLS = ("tcp", "udp", "sctp")
# the maps layout's shared endpoint maps, per protocol (nft checks a map's typed data against
# the rule's protocol), declared while a port uses them: each port has a slot of SLOT keys in
# one. A change costs what committing its map costs, which grows with the map (0.5 ms at 1,500
# ranges, 3 ms at 12,500: bench notes in docs/performance.md), hence many small maps.
SHARDS = {"tcp": 64, "udp": 16, "sctp": 4}
SLOT = 10_000  # numgen's modulus in a shared map: weights to 1/10,000; offsets read as decimals
SLOTS = (2**32 - 1) // SLOT  # slots per map: 32-bit keys, and each range's end + 1 must fit too
SHARED_CONTAINERS = frozenset({HAIRPIN, HAIRPIN_CONNECTIONS})  # elements several services may claim (refcounted)


class Hook(NamedTuple):
    """Where a base chain is attached to netfilter (its policy is always accept)."""

    type: str  # "filter" or "nat"
    hook: str  # "prerouting", "input", "forward", "output" or "postrouting"
    priority: int  # in numbers: nft 1.0.6 accepts the names (dstnat = -100) only on some hooks

    def __str__(self) -> str:
        return f"type {self.type} hook {self.hook} priority {self.priority}; policy accept;"


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[str, ...] = ()
    hook: Hook | None = None  # base chains only
    comment: str = ""


@dataclass(frozen=True)
class Container:
    """A set (value_type "") or verdict map declaration."""

    name: str
    key_type: str
    value_type: str = ""
    comment: str = ""
    flags: str = ""
    timeout: int = 0  # seconds; affinity sets
    typeof: bool = False  # key_type/value_type are expressions ("typeof numgen ... : ip daddr . tcp dport")

    @property
    def kind(self) -> str:
        return "map" if self.value_type else "set"

    def spec(self) -> list[str]:
        """The body of the declaration, one statement per item (joined by the caller)."""
        word = "typeof" if self.typeof else "type"
        parts = [f"{word} {self.key_type}" + (f" : {self.value_type}" if self.value_type else "")]
        if self.flags:
            parts.append(f"flags {self.flags}")
        if self.timeout:
            parts.append(f"timeout {self.timeout}s")
        if self.comment:
            parts.append(f'comment "{self.comment}"')
        return parts


def addr_type(cfg: NodeConfig) -> str:
    return "ipv4_addr" if cfg.ip_family == 4 else "ipv6_addr"


def masquerade_mark(cfg: NodeConfig) -> str:
    return hex(1 << cfg.masquerade_bit)


def masquerade_statement(cfg: NodeConfig) -> str:
    """How a rule asks for masquerade: kube-proxy 1.36 sets the mark inline; the maps layout
    keeps its mark-for-masquerade chain."""
    if cfg.nftables_layout == "maps":
        return f"jump {MARK_MASQ}"
    return f"mark set mark or {masquerade_mark(cfg)}"


def local_match(cfg: NodeConfig, negate: bool) -> str:
    """kube-proxy's local-traffic detector, IfLocalNFT / IfNotLocalNFT (svcproxy/localdetect.py):
    `ip saddr CIDR`, `iifname "br0"`, `iifname "veth*"`; "" for the no-op detector."""
    return local_detector(cfg).nft(negate)


def no_localhost(cfg: NodeConfig) -> str:
    """NodePorts never answer on loopback in nftables mode (that needs route_localnet)."""
    return "ip daddr != 127.0.0.0/8" if cfg.ip_family == 4 else "ip6 daddr != ::1"


def nodeport_set_ips(cfg: NodeConfig) -> tuple[str, ...] | None:
    """Elements of @nodeport-ips; None when NodePorts answer on every local address."""
    ips = cfg.nodeport_ips
    if ips is None:
        return None
    return tuple(ip for ip in ips if not ipaddress.ip_address(ip).is_loopback)


def containers(cfg: NodeConfig) -> tuple[Container, ...]:
    """The table's fixed sets and maps, in declaration order."""
    addr = addr_type(cfg)
    triple = f"{addr} . inet_proto . inet_service"
    out = []
    if cfg.nftables_layout != "maps":  # kube-proxy 1.36 declares it first (setupNFTables)
        out.append(Container(HAIRPIN_CONNECTIONS, f"{addr} . {addr} . inet_proto . inet_service",
                             comment="service hairpin connections"))
    out.append(Container(CLUSTER_IPS, addr, comment="Active ClusterIPs"))
    if nodeport_set_ips(cfg) is not None:
        out.append(Container(NODEPORT_IPS, addr, comment="IPs that accept NodePort traffic"))
    out += [
        Container(NO_ENDPOINT_SERVICES, triple, "verdict",
                  comment="vmap to drop or reject packets to services with no endpoints"),
        Container(NO_ENDPOINT_NODEPORTS, "inet_proto . inet_service", "verdict",
                  comment="vmap to drop or reject packets to service nodeports with no endpoints"),
        Container(FIREWALL_IPS, triple, "verdict",
                  comment="destinations that are subject to LoadBalancerSourceRanges"),
        Container(SERVICE_IPS, triple, "verdict", comment="ClusterIP, ExternalIP and LoadBalancer IP traffic"),
        Container(SERVICE_NODEPORTS, "inet_proto . inet_service", "verdict", comment="NodePort traffic"),
    ]
    if cfg.nftables_layout == "maps":
        ip = family_keyword(cfg.ip_family)
        out += [
            Container(REJECT_SERVICES, triple, comment="service addresses with no endpoints"),
            Container(REJECT_NODEPORTS, "inet_proto . inet_service", comment="node ports with no endpoints"),
            Container(DROP_SERVICES, triple, comment="external addresses with no local endpoints"),
            Container(DROP_NODEPORTS, "inet_proto . inet_service", comment="node ports with no local endpoints"),
            Container(HAIRPIN, f"{ip} saddr . {ip} daddr", typeof=True,
                      comment="endpoint . endpoint: a pod reaching itself through a service"),
            Container(AFFINITY_SERVICES, triple, "verdict",
                      comment="service addresses with ClientIP affinity: where to remember the endpoint"),
            Container(AFFINITY_NODEPORTS, "inet_proto . inet_service", "verdict",
                      comment="node ports with ClientIP affinity: where to remember the endpoint"),
        ]
    return tuple(out)


def _nodeport_rules(cfg: NodeConfig) -> tuple[str, str]:
    """(the no-endpoint check, the dispatch) of node ports: on every local address but
    127.0.0.1 when --nodeport-addresses is unset, else on the addresses of @nodeport-ips."""
    ip = family_keyword(cfg.ip_family)
    if nodeport_set_ips(cfg) is None:
        return (f"{no_localhost(cfg)} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}",
                f"fib daddr type local {no_localhost(cfg)} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}")
    return (f"{ip} daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}",
            f"{ip} daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}")


class _MapsLayoutRules(NamedTuple):
    """What the maps layout adds to the fixed chains (empty in kube-proxy's layout)."""

    service_checks: tuple[str, ...] = ()
    nodeport_checks: tuple[str, ...] = ()
    masquerading: tuple[str, ...] = ()
    remember: tuple[str, ...] = ()  # after DNAT, new connections of affinity services
    affinity: tuple[Chain, ...] = ()

    @classmethod
    def of(cls, cfg: NodeConfig, nodeport_check: str) -> _MapsLayoutRules:
        """No-endpoint verdicts as fixed rules over data sets, hairpin by a set of pairs, and
        ClientIP affinity: the endpoint a new connection was DNATed to is remembered by the
        service's remember- chain, found by the connection's original destination. Every
        DNATed connection passes one of the filter hooks (input, forward or output)."""
        ip = family_keyword(cfg.ip_family)
        triple = f"{ip} daddr . meta l4proto . th dport"
        np_match = nodeport_check.rsplit(" vmap ", 1)[0]
        original = f"ct original {ip} daddr . meta l4proto . ct original proto-dst"
        return cls(
            (f"{triple} @{DROP_SERVICES} drop", f"{triple} @{REJECT_SERVICES} reject"),
            (f"{np_match} @{DROP_NODEPORTS} drop", f"{np_match} @{REJECT_NODEPORTS} reject"),
            (f"ct status dnat {ip} saddr . {ip} daddr @{HAIRPIN} jump {MARK_MASQ}",),
            (f"ct state new ct status dnat jump {AFFINITY_RECORD}",),
            (Chain(AFFINITY_RECORD, tuple(
                rule for p in PROTOCOLS for rule in (
                    f"meta l4proto {p} {original} vmap @{AFFINITY_SERVICES}",
                    f"meta l4proto {p} meta l4proto . ct original proto-dst vmap @{AFFINITY_NODEPORTS}"))),),
        )


def fixed_chains(cfg: NodeConfig, service_cidrs: tuple[str, ...] = ()) -> tuple[Chain, ...]:
    """Base chains (hooked into netfilter) and the top-level chains they jump to, with their rules.

    service_cidrs: the ClusterIP ranges; traffic to an unallocated address in them is dropped."""
    ip = family_keyword(cfg.ip_family)
    new = "ct state new"

    # Filter chains run just before DNAT (-100) so they see the service address.
    nodeport_check, nodeport_dispatch = _nodeport_rules(cfg)
    triple = f"{ip} daddr . meta l4proto . th dport"
    service_check: tuple[str, ...] = (f"{triple} vmap @{NO_ENDPOINT_SERVICES}",)
    nodeport_checks: tuple[str, ...] = (nodeport_check,)
    extra = _MapsLayoutRules.of(cfg, nodeport_check) if cfg.nftables_layout == "maps" else _MapsLayoutRules()
    service_check += extra.service_checks
    nodeport_checks += extra.nodeport_checks
    masquerading, remember, affinity = extra.masquerading, extra.remember, extra.affinity
    return (
        # The firewall must see the service address, so it runs before DNAT; the endpoint and
        # ClusterIP checks run after it (priority 0), so traffic that a service chain already
        # rewrote (e.g. short-circuited local traffic) is not dropped as "no endpoints".
        Chain(FILTER_PREROUTING_PRE_DNAT, (f"{new} jump {FIREWALL_CHECK}",), Hook("filter", "prerouting", -110)),
        Chain(FILTER_OUTPUT_PRE_DNAT, (f"{new} jump {FIREWALL_CHECK}",), Hook("filter", "output", -110)),
        Chain(FILTER_INPUT, (f"{new} jump {NODEPORT_ENDPOINTS_CHECK}", f"{new} jump {SERVICE_ENDPOINTS_CHECK}",
                             *remember), Hook("filter", "input", 0)),
        Chain(FILTER_FORWARD, (f"{new} jump {SERVICE_ENDPOINTS_CHECK}", f"{new} jump {CLUSTER_IPS_CHECK}",
                               *remember), Hook("filter", "forward", 0)),
        Chain(FILTER_OUTPUT, (f"{new} jump {SERVICE_ENDPOINTS_CHECK}", f"{new} jump {CLUSTER_IPS_CHECK}",
                              *remember), Hook("filter", "output", 0)),
        Chain(NAT_PREROUTING, (f"jump {SERVICES}",), Hook("nat", "prerouting", -100)),
        Chain(NAT_OUTPUT, (f"jump {SERVICES}",), Hook("nat", "output", -100)),
        Chain(NAT_POSTROUTING, (f"jump {MASQUERADING}",), Hook("nat", "postrouting", 100)),
        Chain(CLUSTER_IPS_CHECK, (
            f'{ip} daddr @{CLUSTER_IPS} reject comment "Reject traffic to invalid ports of ClusterIPs"',
            *([f'{ip} daddr {{ {", ".join(service_cidrs)} }} drop comment "Drop traffic to unallocated ClusterIPs"']
              if service_cidrs else []),
        )),
        Chain(FIREWALL_CHECK, (f"{triple} vmap @{FIREWALL_IPS}",)),
        *_masquerading_chains(cfg, masquerading),
        Chain(NODEPORT_ENDPOINTS_CHECK, nodeport_checks),
        Chain(REJECT_CHAIN, ("reject",), comment="helper for @no-endpoint-services / @no-endpoint-nodeports"),
        Chain(SERVICE_ENDPOINTS_CHECK, service_check),
        Chain(SERVICES, (*_services_masquerade(cfg), f"{triple} vmap @{SERVICE_IPS}", nodeport_dispatch)),
        *affinity,
    )


def _masquerading_chains(cfg: NodeConfig, maps_rules: tuple[str, ...]) -> tuple[Chain, ...]:
    """masquerading (and the maps layout's mark-for-masquerade). kube-proxy 1.36: marked
    packets, then hairpin connections by @hairpin-connections, with no mark involved."""
    mark = masquerade_mark(cfg)
    if cfg.nftables_layout == "maps":
        return (Chain(MARK_MASQ, (f"mark set mark or {mark}",)),
                Chain(MASQUERADING, (*maps_rules, f"mark and {mark} == 0 return", f"mark set mark xor {mark}",
                                     "masquerade fully-random")))
    ip = family_keyword(cfg.ip_family)
    return (Chain(MASQUERADING, (
        f"mark and {mark} != 0 mark set mark xor {mark} masquerade fully-random",
        f"ct status dnat {ip} saddr . {ip} daddr . meta l4proto . th dport @{HAIRPIN_CONNECTIONS} "
        "masquerade fully-random")),)


def _services_masquerade(cfg: NodeConfig) -> tuple[str, ...]:
    """kube-proxy 1.36 masquerades ClusterIP traffic in "services", for every ClusterIP at
    once (the maps layout does it per port, in the service chains)."""
    if cfg.nftables_layout == "maps":
        return ()
    ip = family_keyword(cfg.ip_family)
    masq = masquerade_statement(cfg)
    if cfg.masquerade_all:
        return (f'{ip} daddr @{CLUSTER_IPS} {masq} comment "masquerade all clusterIP traffic"',)
    if (not_local := local_match(cfg, negate=True)):
        return (f'{ip} daddr @{CLUSTER_IPS} {not_local} {masq} comment "masquerade clusterIP traffic from outside cluster"',)
    return ()
