"""Where `lab curl SERVICE[:PORT]` connects: a service's address as seen from inside or outside.

Pure: resolves a service name and port against the lab's manifests. From a pod or a node the
ClusterIP is used; from outside, the first LoadBalancer ingress IP, else an externalIP, else the
NodePort on the first node. `via` picks another address explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..model.objects import Service, ServicePort
from .plan import LabError, NodeSpec

VIAS = ("cluster", "nodeport", "lb", "external")


@dataclass(frozen=True)
class Target:
    service: str  # ns/name:port
    ip: str
    port: int
    protocol: str
    kind: str  # cluster | nodeport | lb | external


def find_service(services: Iterable[Service], name: str) -> Service:
    services = list(services)
    ns, _, short = name.rpartition("/")
    hits = [s for s in services if s.name == short and (not ns or s.namespace == ns)]
    if not hits:
        known = ", ".join(sorted(s.key for s in services)) or "none"
        raise LabError(f"no service {name!r} in the lab's manifests (services: {known})")
    if len(hits) > 1:
        raise LabError(f"service name {name!r} is ambiguous: say which one ({', '.join(s.key for s in hits)})")
    return hits[0]


def find_port(svc: Service, port: str | None, udp: bool) -> ServicePort:
    proto = "UDP" if udp else "TCP"
    ports = [p for p in svc.ports if p.protocol == proto]
    if port:
        ports = [p for p in ports if port in (p.name, str(p.port))]
    if not ports:
        listed = ", ".join(f"{p.name or '-'} {p.port}/{p.protocol}" for p in svc.ports)
        want = f"port {port!r}" if port else "a port"
        raise LabError(f"service {svc.key} has no {proto} {want} (ports: {listed})"
                       + ("" if udp else "; add --udp for a UDP port"))
    return ports[0]


def resolve(services: Iterable[Service], spec: str, *, outside: bool, nodes: list[NodeSpec],
            udp: bool = False, via: str | None = None, node: str | None = None, family: int = 4) -> Target:
    """SERVICE[:PORT] -> the address to connect to. node: which node's NodePort (default: first).
    family: 4 or 6, which of a dual-stack Service's addresses (and a node's) to use."""
    name, _, port_spec = spec.partition(":")
    svc = find_service(services, name)
    p = find_port(svc, port_spec or None, udp)
    label = f"{svc.key}:{p.name}" if p.name else svc.key
    if via is None:
        if not outside:
            via = "cluster"
        elif any(i.ip and (":" in i.ip) == (family == 6) for i in svc.load_balancer_ingress) \
                and svc.type == "LoadBalancer":
            via = "lb"
        elif any((":" in i) == (family == 6) for i in svc.external_ips):
            via = "external"
        else:
            via = "nodeport"
    mine = lambda ips: [i for i in ips if i and i != "None" and (":" in i) == (family == 6)]  # noqa: E731
    if via == "cluster":
        ips = mine(svc.cluster_ips)
        if not ips:
            raise LabError(f"service {svc.key} has no IPv{family} ClusterIP"
                           + (" (its ipFamilies would need IPv6 and an IPv6 clusterIPs entry)" if family == 6 else ""))
        return Target(label, ips[0], p.port, p.protocol, via)
    if via == "nodeport":
        if not p.node_port or svc.type not in ("NodePort", "LoadBalancer"):
            raise LabError(f"service {svc.key} has no NodePort; it is reachable from outside only through "
                           "a LoadBalancer IP or an externalIP (or use --from a pod)")
        target = next((n for n in nodes if node in (None, n.name, n.ip)), None)
        if target is None:
            raise LabError(f"no node {node!r} in this lab")
        if family == 6 and not target.ip6:
            raise LabError("this lab's nodes have no IPv6 address (start it with `lab up --dual-stack`)")
        return Target(label, target.ip6 if family == 6 else target.ip, p.node_port, p.protocol, via)
    if via == "lb":
        ips = mine([i.ip for i in svc.load_balancer_ingress if i.ip]) if svc.type == "LoadBalancer" else []
        if not ips:
            raise LabError(f"service {svc.key} has no IPv{family} LoadBalancer ingress IP")
        return Target(label, ips[0], p.port, p.protocol, via)
    if via == "external":
        ips = mine(svc.external_ips)
        if not ips:
            raise LabError(f"service {svc.key} has no IPv{family} externalIPs")
        return Target(label, ips[0], p.port, p.protocol, via)
    raise LabError(f"--via {via!r}: choose one of {', '.join(VIAS)}")
