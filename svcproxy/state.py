"""The desired state of one node: service ports and their endpoints, for one IP family.

Built by pure functions from model objects and the NodeConfig. Keyed per service so the
daemon can rebuild only what changed (see ServiceState) and renderers can cache per service.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

from .config import NodeConfig, format_endpoint, ip_family
from .model.load import Objects
from .model.objects import (
    LABEL_HEADLESS,
    LABEL_SERVICE_PROXY_NAME,
    EndpointSlice,
    Node,
    Service,
    ServiceCIDR,
)
from .model.selection import Policy, port_policy


@dataclass(frozen=True, slots=True, order=True)
class ServicePortName:
    namespace: str
    name: str
    port: str
    protocol: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}:{self.port}" if self.port else f"{self.namespace}/{self.name}"

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    ip: str
    port: int
    is_local: bool = False
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    zone_hints: frozenset[str] = frozenset()
    node_hints: frozenset[str] = frozenset()
    node_name: str = ""

    def __str__(self) -> str:
        return format_endpoint(self.ip, self.port)


@dataclass(frozen=True, slots=True)
class ServicePortInfo:
    name: ServicePortName
    cluster_ip: str
    port: int
    protocol: str  # TCP | UDP | SCTP
    target_port: int | str = 0
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    session_affinity_timeout: int = 0  # 0 = no ClientIP affinity
    external_policy_local: bool = False
    internal_policy_local: bool = False
    health_check_node_port: int = 0

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.load_balancer_ips or self.external_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        # kube-proxy: external traffic needs the Cluster endpoints even with eTP=Local, for the
        # short-circuit of pod and node traffic to external addresses.
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or (self.external_policy_local and self.externally_accessible)


def service_is_proxied(svc: Service) -> bool:
    """kube-proxy skips headless, ExternalName and other-proxy services."""
    if svc.type == "ExternalName" or "None" in svc.cluster_ips or not svc.cluster_ips:
        return False
    return svc.label(LABEL_SERVICE_PROXY_NAME) is None and svc.label(LABEL_HEADLESS) is None


def service_port_infos(svc: Service, cfg: NodeConfig) -> list[ServicePortInfo]:
    """The service's ports as this node's family sees them; empty if it is not proxied here."""
    if not service_is_proxied(svc):
        return []
    cluster_ip = next((ip for ip in svc.cluster_ips if ip_family(ip) == cfg.ip_family), "")
    if not cluster_ip:
        return []
    fam = cfg.ip_family
    external_ips = tuple(ip for ip in svc.external_ips if ip_family(ip) == fam)
    lb_ips: tuple[str, ...] = ()
    if svc.type == "LoadBalancer":
        lb_ips = tuple(dict.fromkeys(i.ip for i in svc.load_balancer_ingress
                                     if i.ip_mode != "Proxy" and ip_family(i.ip) == fam))
    ranges = tuple(r for r in svc.load_balancer_source_ranges if ip_family(r) == fam) if lb_ips else ()
    externally = svc.type in ("NodePort", "LoadBalancer") or bool(svc.external_ips)
    etp_local = externally and svc.external_traffic_policy == "Local"
    affinity = svc.session_affinity_timeout if svc.session_affinity == "ClientIP" else 0
    hc = svc.health_check_node_port if (svc.type == "LoadBalancer" and etp_local) else 0
    out = []
    for p in svc.ports:
        out.append(ServicePortInfo(
            name=ServicePortName(svc.namespace, svc.name, p.name, p.protocol),
            cluster_ip=cluster_ip, port=p.port, protocol=p.protocol, target_port=p.target_port,
            node_port=p.node_port if svc.type in ("NodePort", "LoadBalancer") else 0,
            external_ips=external_ips, load_balancer_ips=lb_ips, load_balancer_source_ranges=ranges,
            session_affinity_timeout=affinity, external_policy_local=etp_local,
            internal_policy_local=svc.internal_traffic_policy == "Local", health_check_node_port=hc,
        ))
    return out


def endpoint_infos(slices: Iterable[EndpointSlice], cfg: NodeConfig) -> dict[ServicePortName, tuple[EndpointInfo, ...]]:
    """Endpoints per service port from one service's slices, deduplicated and sorted as kube-proxy does."""
    family = cfg.family_name
    by_port: dict[ServicePortName, dict[str, EndpointInfo]] = {}
    for sl in sorted(slices, key=lambda s: s.name):
        if sl.address_type != family:
            continue
        for port in sl.ports:
            spn = ServicePortName(sl.namespace, sl.service_name, port.name, port.protocol)
            seen = by_port.setdefault(spn, {})
            for ep in sl.endpoints:
                local = ep.node_name == cfg.hostname and bool(ep.node_name)
                info = EndpointInfo(ep.addresses[0], port.port, local, ep.ready, ep.serving, ep.terminating,
                                    ep.zone_hints, ep.node_hints, ep.node_name)
                key = str(info)
                if key not in seen or local:
                    seen[key] = info
    return {spn: tuple(eps[k] for k in sorted(eps)) for spn, eps in by_port.items()}


@dataclass(frozen=True)
class ServiceState:
    """One Service on this node: its ports and their endpoints. The unit of incremental change."""

    key: str
    ports: tuple[ServicePortInfo, ...]
    endpoints: dict[ServicePortName, tuple[EndpointInfo, ...]] = field(hash=False, compare=True)


@dataclass
class ProxyState:
    """Everything a renderer needs besides the NodeConfig."""

    services: dict[str, ServiceState] = field(default_factory=dict)  # by "ns/name"
    errors: list[str] = field(default_factory=list)
    zone: str = ""
    # ClusterIP ranges of this family (ServiceCIDR objects): nftables mode drops traffic to
    # addresses in them that no Service has, as kube-proxy does.
    service_cidrs: tuple[str, ...] = ()

    @cached_property
    def ports(self) -> list[ServicePortInfo]:
        """All service ports, sorted by name for deterministic output."""
        return sorted((p for s in self.services.values() for p in s.ports), key=lambda p: p.name)

    def endpoints(self, spn: ServicePortName) -> tuple[EndpointInfo, ...]:
        svc = self.services.get(spn.service_key)
        return svc.endpoints.get(spn, ()) if svc else ()

    def policy(self, port: ServicePortInfo, cfg: NodeConfig) -> Policy[EndpointInfo]:
        """Where this port's traffic goes on this node (model/selection.py: port_policy)."""
        return port_policy(port, self.endpoints(port.name), cfg.hostname, self.zone)


def build_service_state(svc: Service, slices: Iterable[EndpointSlice], cfg: NodeConfig) -> ServiceState:
    ports = tuple(service_port_infos(svc, cfg))
    eps = endpoint_infos(slices, cfg) if ports else {}
    return ServiceState(svc.key, ports, eps)


class ObjectView(Protocol):
    """What the state is built from: the daemon's ObjectStore (sources/store.py), or the Index
    of a set of manifests (below). One reader for both, so `render`, `run` and the lab agree."""

    services: Mapping[str, Service]
    service_cidrs: Mapping[str, ServiceCIDR]

    def node(self, name: str) -> Node | None: ...

    def service_slices(self, service_key: str) -> Iterable[EndpointSlice]: ...


def node_zone(node: Node | None, cfg: NodeConfig) -> str:
    """This node's zone: its Node object's label, else --zone (cfg.zone)."""
    return node.zone if node is not None else cfg.zone


def family_cidrs(cidrs: Iterable[ServiceCIDR], cfg: NodeConfig) -> tuple[str, ...]:
    """The ServiceCIDR ranges of this node's family, sorted."""
    return tuple(sorted({c for sc in cidrs for c in sc.cidrs if ip_family(c) == cfg.ip_family}))


def update_state(prev: ProxyState, view: ObjectView, cfg: NodeConfig,
                 touched: Iterable[str] | None) -> tuple[ProxyState, set[str] | None]:
    """The desired state after a change, and the keys of the services whose ServiceState
    differs from prev's; None when everything must be redone (a full sync).

    touched: keys of the services whose Service or EndpointSlices changed since prev (the
    store's Changes), or None to rebuild every service. A new zone rebuilds every service (its
    topology hints read differently); new ServiceCIDRs keep the services but need a full sync."""
    zone = node_zone(view.node(cfg.hostname), cfg)
    rebuild_all = touched is None or zone != prev.zone
    services = {} if rebuild_all else dict(prev.services)
    changed: set[str] = set()
    for key in (view.services if rebuild_all else touched):
        svc = view.services.get(key)
        new = build_service_state(svc, view.service_slices(key), cfg) if svc is not None else None
        if new is not None and not new.ports:
            new = None  # not proxied here (headless, ExternalName, other family): as if absent
        if new is None:
            services.pop(key, None)
        else:
            services[key] = new
        if new != prev.services.get(key):
            changed.add(key)
    cidrs = family_cidrs(view.service_cidrs.values(), cfg)
    state = ProxyState(services=services, zone=zone, service_cidrs=cidrs)
    return state, (None if rebuild_all or cidrs != prev.service_cidrs else changed)


@dataclass
class Index:
    """A set of manifests' objects by key, as the store holds them. A Service or slice defined
    twice is an error and the later definition wins; a slice of an unknown Service is an error
    and ignored; of two Node objects of one name the first counts, as before."""

    services: dict[str, Service] = field(default_factory=dict)
    service_cidrs: dict[str, ServiceCIDR] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    slices: dict[str, list[EndpointSlice]] = field(default_factory=dict)  # by service key
    errors: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, objects: Objects) -> Index:
        ix = cls(errors=list(objects.errors))
        for svc in objects.services:
            if svc.key in ix.services:
                ix.errors.append(f"Service {svc.key}: defined more than once; using the last definition")
            ix.services[svc.key] = svc
        by_key: dict[str, EndpointSlice] = {}
        for sl in objects.slices:
            if sl.key in by_key:
                ix.errors.append(f"EndpointSlice {sl.key}: defined more than once; using the last definition")
            by_key[sl.key] = sl
        for sl in by_key.values():
            if sl.service_key not in ix.services:
                ix.errors.append(f"EndpointSlice {sl.key}: metadata.labels[kubernetes.io/service-name]: "
                                 f"Service {sl.service_key} not found; slice ignored")
                continue
            ix.slices.setdefault(sl.service_key, []).append(sl)
        for node in objects.nodes:
            ix.nodes.setdefault(node.name, node)  # the first one, as before
        for i, sc in enumerate(objects.service_cidrs):
            ix.service_cidrs[f"{i}/{sc.name}"] = sc  # all of them: their ranges are unioned
        return ix

    def node(self, name: str) -> Node | None:
        return self.nodes.get(name)

    def service_slices(self, service_key: str) -> list[EndpointSlice]:
        return self.slices.get(service_key, [])


def build_state(objects: Objects, cfg: NodeConfig) -> ProxyState:
    """The whole desired state from a set of objects; unusable objects become errors."""
    index = Index.of(objects)
    state, _ = update_state(ProxyState(), index, cfg, None)
    state.errors = index.errors
    return state
