"""The Kubernetes objects svcproxy reads, reduced to the fields a proxy needs.

Parsed once at the edge (see parse.py) into frozen, slotted dataclasses: cheap to hash and
compare, so the state layer can tell what changed by equality alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Protocol = Literal["TCP", "UDP", "SCTP"]
PROTOCOLS: tuple[str, ...] = ("TCP", "UDP", "SCTP")

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")

# Labels and annotations kube-proxy looks at.
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_SERVICE_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
LABEL_HEADLESS = "service.kubernetes.io/headless"
LABEL_TOPOLOGY_ZONE = "topology.kubernetes.io/zone"


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    protocol: Protocol
    port: int
    target_port: int | str
    node_port: int = 0


@dataclass(frozen=True, slots=True)
class LoadBalancerIngress:
    ip: str
    # "VIP" (default) or "Proxy"; kube-proxy does not DNAT Proxy-mode ingress IPs.
    ip_mode: str = "VIP"


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    type: str = "ClusterIP"
    cluster_ips: tuple[str, ...] = ()  # "None" for headless services
    ports: tuple[ServicePort, ...] = ()
    external_ips: tuple[str, ...] = ()
    load_balancer_ingress: tuple[LoadBalancerIngress, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    session_affinity: str = "None"  # "None" | "ClientIP"
    session_affinity_timeout: int = 10800
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    health_check_node_port: int = 0
    traffic_distribution: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def label(self, name: str) -> str | None:
        for k, v in self.labels:
            if k == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str
    protocol: Protocol
    port: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""
    zone: str = ""
    zone_hints: frozenset[str] = field(default_factory=frozenset)
    node_hints: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str
    address_type: str  # IPv4 | IPv6 | FQDN
    ports: tuple[EndpointPort, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.service_name}"


@dataclass(frozen=True, slots=True)
class ServiceCIDR:
    """networking.k8s.io/v1 ServiceCIDR: a range ClusterIPs are allocated from."""

    name: str
    cidrs: tuple[str, ...] = ()

    @property
    def key(self) -> str:  # cluster-scoped
        return self.name


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    addresses: tuple[str, ...] = ()  # status.addresses: InternalIPs, then ExternalIPs (kube-proxy's order)
    pod_cidrs: tuple[str, ...] = ()  # spec.podCIDRs (detect-local mode NodeCIDR)

    @property
    def zone(self) -> str:
        for k, v in self.labels:
            if k == LABEL_TOPOLOGY_ZONE:
                return v
        return ""
