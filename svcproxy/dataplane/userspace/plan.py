"""What the node must answer on in userspace mode: a pure function of (state, NodeConfig).

Every service address becomes a Frontend (protocol, address, port) that the proxier listens
on; each Frontend carries the endpoints its connections may go to. Kept apart from the
sockets so the choice of addresses and endpoints can be read and tested without root.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from ...config import NodeConfig
from ...localdetect import local_detector
from ...state import ProxyState, ServicePortInfo, ServiceState

Endpoint = tuple[str, int]  # (ip, port)
Key = tuple[str, str, int]  # (protocol, listen address, port); "0.0.0.0"/"::" = every local address
SUPPORTED = ("TCP", "UDP")


def wildcard(family: int) -> str:
    return "0.0.0.0" if family == 4 else "::"


@dataclass(frozen=True)
class Frontend:
    """One listening address of a service port and where its connections may go.

    internal: endpoints for traffic to the ClusterIP (iTP), and for pod/node traffic to external
    addresses (kube-proxy short-circuits it to the Cluster endpoints). external: endpoints for
    traffic from outside the cluster to a NodePort, externalIP or LB IP (eTP).
    """

    service: str  # "ns/name:port", for logs
    kind: str  # cluster | nodeport | external | loadbalancer
    internal: tuple[Endpoint, ...]
    external: tuple[Endpoint, ...] = ()
    affinity_timeout: int = 0  # seconds of ClientIP affinity; 0 = none
    source_ranges: tuple[str, ...] = ()  # loadBalancerSourceRanges (LB IPs only)

    @property
    def is_external(self) -> bool:
        return self.kind != "cluster"

    @property
    def endpoints(self) -> frozenset[Endpoint]:
        return frozenset(self.internal) | frozenset(self.external)


@dataclass
class Plan:
    frontends: dict[Key, Frontend] = field(default_factory=dict)
    addresses: set[str] = field(default_factory=set)  # service IPs the node must own
    unsupported: dict[str, str] = field(default_factory=dict)  # service port -> why it is not proxied


@dataclass(frozen=True)
class ServicePlan:
    """One service's part of the Plan."""

    frontends: tuple[tuple[Key, Frontend], ...]
    addresses: frozenset[str]
    unsupported: tuple[tuple[str, str], ...]


# per service key: (the ServiceState it was made from, the node's zone, its plan)
PlanCache = dict[str, tuple[ServiceState, str, ServicePlan]]


def plan(state: ProxyState, cfg: NodeConfig, cache: PlanCache | None = None) -> Plan:
    """Every frontend this node listens on. A service port without any usable endpoint gets no
    listener: the kernel then refuses at once (TCP reset, ICMP port unreachable), as
    kube-proxy's REJECT rule does.

    cache (kept by the caller between syncs) reuses the plan of every service whose
    ServiceState object is unchanged: the daemon replaces only the services that changed."""
    out = Plan()
    for key in sorted(state.services):
        svc = state.services[key]
        hit = cache.get(key) if cache is not None else None
        if hit is not None and hit[0] is svc and hit[1] == state.zone:
            part = hit[2]
        else:
            part = plan_service(svc, state, cfg)
            if cache is not None:
                cache[key] = (svc, state.zone, part)
        for fkey, fe in part.frontends:
            out.frontends.setdefault(fkey, fe)  # two services claiming one address: the first wins
        out.addresses |= part.addresses
        out.unsupported.update(part.unsupported)
    if cache is not None:
        for key in set(cache) - set(state.services):
            del cache[key]
    return out


def plan_service(svc: ServiceState, state: ProxyState, cfg: NodeConfig) -> ServicePlan:
    frontends: list[tuple[Key, Frontend]] = []
    addresses: set[str] = set()
    unsupported: list[tuple[str, str]] = []
    for port in sorted(svc.ports, key=lambda p: p.name):
        addresses.update((port.cluster_ip, *port.external_ips, *port.load_balancer_ips))
        if port.protocol not in SUPPORTED:
            unsupported.append((str(port.name), f"protocol {port.protocol} is not supported in userspace mode "
                                                f"(only {' and '.join(SUPPORTED)}); use iptables or nftables mode"))
            continue
        sel = state.policy(port, cfg).selection
        internal = _endpoints(sel.local if port.internal_policy_local else sel.cluster)
        external = _endpoints(sel.local if port.external_policy_local else sel.cluster)
        short_circuit = _endpoints(sel.cluster)
        frontends += [(key, fe) for key, fe in _frontends(port, cfg, internal, external, short_circuit)
                      if fe.internal or fe.external]
    return ServicePlan(tuple(frontends), frozenset(addresses), tuple(unsupported))


def _endpoints(eps: tuple) -> tuple[Endpoint, ...]:
    return tuple((ep.ip, ep.port) for ep in eps)


def _frontends(port: ServicePortInfo, cfg: NodeConfig, internal: tuple[Endpoint, ...],
               external: tuple[Endpoint, ...], short_circuit: tuple[Endpoint, ...]):
    proto, name, aff = port.protocol, str(port.name), port.session_affinity_timeout
    yield (proto, port.cluster_ip, port.port), Frontend(name, "cluster", internal, affinity_timeout=aff)
    for ip in port.external_ips:
        yield (proto, ip, port.port), Frontend(name, "external", short_circuit, external, aff)
    for ip in port.load_balancer_ips:
        yield (proto, ip, port.port), Frontend(name, "loadbalancer", short_circuit, external, aff,
                                               port.load_balancer_source_ranges)
    if port.node_port:
        ips = cfg.nodeport_ips
        for ip in (wildcard(cfg.ip_family),) if ips is None else ips:
            yield (proto, ip, port.node_port), Frontend(name, "nodeport", short_circuit, external, aff)


def in_ranges(ip: str, ranges: tuple[str, ...]) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(addr in ipaddress.ip_network(r, strict=False) for r in ranges)


def is_cluster_client(ip: str, cfg: NodeConfig, in_interface: Callable[[str], str | None] = lambda ip: None) -> bool:
    """A pod (by the local-traffic detector) or the node itself: kube-proxy sends its traffic to
    an external address of a service to the Cluster endpoints even with externalTrafficPolicy
    Local. in_interface tells the interface a client's packets arrive on (the interface modes
    need it; unknown counts as not a pod)."""
    if cfg.is_local(ip):
        return True
    detector = local_detector(cfg)
    if detector.kind in ("interface", "interface-prefix"):
        return bool(detector.is_local(ip, in_interface(ip)))
    return bool(detector.is_local(ip, None))
