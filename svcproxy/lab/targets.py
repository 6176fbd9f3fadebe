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
            udp: bool = False, via: str | None = None, node: str | None = None) -> Target:
    """SERVICE[:PORT] -> the address to connect to. node: which node's NodePort (default: first)."""
    name, _, port_spec = spec.partition(":")
    svc = find_service(services, name)
    p = find_port(svc, port_spec or None, udp)
    label = f"{svc.key}:{p.name}" if p.name else svc.key
    if via is None:
        if not outside:
            via = "cluster"
        elif any(i.ip for i in svc.load_balancer_ingress) and svc.type == "LoadBalancer":
            via = "lb"
        elif svc.external_ips:
            via = "external"
        else:
            via = "nodeport"
    if via == "cluster":
        ip = next((i for i in svc.cluster_ips if ":" not in i and i != "None"), "")
        if not ip:
            raise LabError(f"service {svc.key} has no IPv4 ClusterIP")
        return Target(label, ip, p.port, p.protocol, via)
    if via == "nodeport":
        if not p.node_port or svc.type not in ("NodePort", "LoadBalancer"):
            raise LabError(f"service {svc.key} has no NodePort; it is reachable from outside only through "
                           "a LoadBalancer IP or an externalIP (or use --from a pod)")
        target = next((n for n in nodes if node in (None, n.name, n.ip)), None)
        if target is None:
            raise LabError(f"no node {node!r} in this lab")
        return Target(label, target.ip, p.node_port, p.protocol, via)
    if via == "lb":
        ips = [i.ip for i in svc.load_balancer_ingress if i.ip] if svc.type == "LoadBalancer" else []
        if not ips:
            raise LabError(f"service {svc.key} has no LoadBalancer ingress IP")
        return Target(label, ips[0], p.port, p.protocol, via)
    if via == "external":
        if not svc.external_ips:
            raise LabError(f"service {svc.key} has no externalIPs")
        return Target(label, svc.external_ips[0], p.port, p.protocol, via)
    raise LabError(f"--via {via!r}: choose one of {', '.join(VIAS)}")
