"""Turn Kubernetes JSON/YAML dicts into model objects, or say exactly what is wrong.

Every error names the object (kind namespace/name) and the field path, so an operator can
find the line to fix. A bad object raises ObjectError; callers skip it and go on.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

from .fast_slice import NotCommon, fast_endpoint_slice
from .names import DNS1035_LABEL, DNS1123_LABEL, DNS1123_SUBDOMAIN, problem, shown
from .objects import (
    LABEL_SERVICE_NAME,
    PROTOCOLS,
    SERVICE_TYPES,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    LoadBalancerIngress,
    Node,
    Service,
    ServiceCIDR,
    ServicePort,
)


class ObjectError(ValueError):
    """A Kubernetes object that cannot be used, with where and why."""

    def __init__(self, kind: str, ref: str, field: str, message: str):
        self.kind, self.ref, self.field, self.message = kind, ref, field, message
        where = f"{kind} {ref}" if ref else kind
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


_MISSING = object()


class _Reader:
    """Typed access to a nested dict that raises ObjectError with the field path."""

    def __init__(self, kind: str, obj: Mapping[str, Any]):
        self.kind = kind
        meta = obj.get("metadata") if isinstance(obj, Mapping) else None
        meta = meta if isinstance(meta, Mapping) else {}
        ns = meta.get("namespace") or ""
        name = meta.get("name") or ""
        self.ref = f"{shown(ns)}/{shown(name)}" if ns and isinstance(ns, str) else shown(name) if name else ""

    def fail(self, field: str, message: str) -> ObjectError:
        return ObjectError(self.kind, self.ref, field, message)

    def get(self, obj: Any, key: str, path: str, typ: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        value = obj.get(key, None) if isinstance(obj, Mapping) else None
        if value is None:
            if default is _MISSING:
                raise self.fail(path, "is required")
            return default
        if typ is int and isinstance(value, bool) or not isinstance(value, typ):
            raise self.fail(path, f"must be {_type_name(typ)}, got {type(value).__name__} {shown(value)}")
        return value

    def port(self, obj: Any, key: str, path: str, default: Any = _MISSING, low: int = 1) -> int:
        value = self.get(obj, key, path, int, default)
        if value is None or (value == default and default is not _MISSING):
            return value
        if not low <= value <= 65535:
            raise self.fail(path, f"{value} is out of range ({low}-65535)")
        return value

    def ip(self, value: Any, path: str, family: int | None = None) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"must be an IP address string, got {value!r}")
        try:
            addr = _parse_ip(value)
        except ValueError:
            raise self.fail(path, f"{value!r} is not a valid IP address") from None
        if family and addr.version != family:
            raise self.fail(path, f"{value!r} is not an IPv{family} address")
        return str(addr)

    def cidr(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"must be a CIDR string, got {value!r}")
        try:
            return str(_parse_cidr(value.strip()))
        except ValueError:
            raise self.fail(path, f"{value!r} is not a valid CIDR") from None

    def choice(self, value: str, path: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise self.fail(path, f"{shown(value)} is not one of {', '.join(allowed)}")
        return value

    def name(self, value: str, path: str, rule: re.Pattern[str]) -> str:
        """value, when it keeps Kubernetes' naming rule (names reach rule text)."""
        why = problem(value, rule)
        if why:
            raise self.fail(path, why)
        return value

    def items(self, obj: Any, key: str, path: str) -> list[tuple[str, Any]]:
        seq = self.get(obj, key, path, list, [])
        return [(f"{path}[{i}]", item) for i, item in enumerate(seq)]


def _type_name(typ: type | tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", list: "a list", dict: "a mapping", bool: "a boolean"}
    if isinstance(typ, tuple):
        return " or ".join(names.get(t, t.__name__) for t in typ)
    return names.get(typ, typ.__name__)


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Like kube-proxy's ParseIPSloppy: IPv4 octets with leading zeros are accepted as decimal;
    an IPv6 zone (`fe80::1%eth0`) is not an address Kubernetes accepts."""
    if "%" in value:
        raise ValueError(f"{value!r}: an IPv6 zone is not allowed")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        parts = value.split(".")
        if len(parts) == 4 and all(p.isdigit() and len(p) <= 3 for p in parts):
            return ipaddress.IPv4Address(".".join(str(int(p)) for p in parts))
        raise


def _parse_cidr(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Like kube-proxy's ParseCIDRSloppy: leading zeros in the address and prefix are accepted."""
    addr, sep, prefix = value.partition("/")
    if not sep or not prefix.isdigit():
        return ipaddress.ip_network(value, strict=False)
    return ipaddress.ip_network(f"{_parse_ip(addr)}/{int(prefix)}", strict=False)


def _metadata(r: _Reader, obj: Mapping[str, Any], namespaced: bool = True,
              rule: re.Pattern[str] = DNS1123_SUBDOMAIN) -> tuple[str, str, dict]:
    meta = r.get(obj, "metadata", "metadata", dict)
    name = r.get(meta, "name", "metadata.name", str)
    if not name:
        raise r.fail("metadata.name", "must not be empty")
    r.name(name, "metadata.name", rule)
    ns = r.get(meta, "namespace", "metadata.namespace", str, "default") if namespaced else ""
    if ns:
        r.name(ns, "metadata.namespace", DNS1123_LABEL)
    labels = r.get(meta, "labels", "metadata.labels", dict, {})
    for k, v in labels.items():
        if not isinstance(v, str):
            raise r.fail(f"metadata.labels[{shown(k)}]", f"must be a string, got {shown(v)}")
    return ns or "default", name, labels


def parse_service(obj: Mapping[str, Any]) -> Service:
    r = _Reader("Service", obj)
    ns, name, labels = _metadata(r, obj, rule=DNS1035_LABEL)
    spec = r.get(obj, "spec", "spec", dict, {})
    svc_type = r.choice(r.get(spec, "type", "spec.type", str, "ClusterIP"), "spec.type", SERVICE_TYPES)

    cluster_ips: list[str] = []
    raw_ips = r.get(spec, "clusterIPs", "spec.clusterIPs", list, [])
    path = "spec.clusterIPs"
    if not raw_ips:
        single = r.get(spec, "clusterIP", "spec.clusterIP", str, "")
        raw_ips, path = ([single] if single else []), "spec.clusterIP"
    for i, ip in enumerate(raw_ips):
        if ip == "None":
            cluster_ips = ["None"]
            break
        if ip == "":
            continue
        cluster_ips.append(r.ip(ip, f"{path}[{i}]" if path.endswith("s") else path))
    if not cluster_ips and svc_type != "ExternalName":
        # The API server allocates one; a manifest read from a file must say it. kube-proxy
        # skips such a Service without a word; here it is named, so the missing field is found.
        raise r.fail("spec.clusterIP", "is not set (the API server would allocate one; in a manifest, give it, "
                     "or None for a headless Service)")

    ports = []
    seen_names: set[tuple[str, str]] = set()
    for p, port in r.items(spec, "ports", "spec.ports"):
        if not isinstance(port, dict):
            raise r.fail(p, f"must be a mapping, got {shown(port)}")
        pname = r.get(port, "name", f"{p}.name", str, "")
        if pname:
            r.name(pname, f"{p}.name", DNS1123_LABEL)
        proto = r.choice(r.get(port, "protocol", f"{p}.protocol", str, "TCP"), f"{p}.protocol", PROTOCOLS)
        number = r.port(port, "port", f"{p}.port")
        target = port.get("targetPort", number)
        if isinstance(target, bool) or not isinstance(target, int | str):
            raise r.fail(f"{p}.targetPort", f"must be an integer or a string, got {shown(target)}")
        if isinstance(target, int) and not 1 <= target <= 65535:
            raise r.fail(f"{p}.targetPort", f"{target} is out of range (1-65535)")
        node_port = r.port(port, "nodePort", f"{p}.nodePort", 0)
        if (pname, proto) in seen_names:
            raise r.fail(f"{p}.name", f"duplicate port name {pname!r} for {proto}")
        seen_names.add((pname, proto))
        ports.append(ServicePort(pname, proto, number, target, node_port))  # type: ignore[arg-type]
    if not ports and svc_type != "ExternalName" and cluster_ips != ["None"]:
        raise r.fail("spec.ports", "must hold at least one port (the API server requires one, except for a "
                     "headless Service)")

    external_ips = tuple(r.ip(ip, f"spec.externalIPs[{i}]") for i, ip in
                         enumerate(r.get(spec, "externalIPs", "spec.externalIPs", list, [])))
    ranges = tuple(r.cidr(c, f"spec.loadBalancerSourceRanges[{i}]") for i, c in
                   enumerate(r.get(spec, "loadBalancerSourceRanges", "spec.loadBalancerSourceRanges", list, [])))

    ingress: list[LoadBalancerIngress] = []
    status = r.get(obj, "status", "status", dict, {})
    lb = r.get(status, "loadBalancer", "status.loadBalancer", dict, {})
    for p, ing in r.items(lb, "ingress", "status.loadBalancer.ingress"):
        if not isinstance(ing, dict):
            raise r.fail(p, f"must be a mapping, got {shown(ing)}")
        ip = r.get(ing, "ip", f"{p}.ip", str, "")
        if ip:  # hostname-only ingress is not programmed, as in kube-proxy
            mode = r.choice(r.get(ing, "ipMode", f"{p}.ipMode", str, "VIP"), f"{p}.ipMode", ("VIP", "Proxy"))
            ingress.append(LoadBalancerIngress(r.ip(ip, f"{p}.ip"), mode))

    affinity = r.choice(r.get(spec, "sessionAffinity", "spec.sessionAffinity", str, "None"),
                        "spec.sessionAffinity", ("None", "ClientIP"))
    timeout = 10800
    if affinity == "ClientIP":
        cfg = r.get(spec, "sessionAffinityConfig", "spec.sessionAffinityConfig", dict, {})
        client = r.get(cfg, "clientIP", "spec.sessionAffinityConfig.clientIP", dict, {})
        path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
        timeout = r.get(client, "timeoutSeconds", path, int, 10800)
        if not 0 < timeout <= 86400:
            raise r.fail(path, f"{timeout} is out of range (1-86400)")
    etp = r.choice(r.get(spec, "externalTrafficPolicy", "spec.externalTrafficPolicy", str, "Cluster"),
                   "spec.externalTrafficPolicy", ("Cluster", "Local"))
    itp = r.choice(r.get(spec, "internalTrafficPolicy", "spec.internalTrafficPolicy", str, "Cluster"),
                   "spec.internalTrafficPolicy", ("Cluster", "Local"))
    hc_port = r.port(spec, "healthCheckNodePort", "spec.healthCheckNodePort", 0)
    distribution = r.get(spec, "trafficDistribution", "spec.trafficDistribution", str, "")

    return Service(
        namespace=ns, name=name, type=svc_type, cluster_ips=tuple(cluster_ips), ports=tuple(ports),
        external_ips=external_ips, load_balancer_ingress=tuple(ingress),
        load_balancer_source_ranges=ranges, session_affinity=affinity, session_affinity_timeout=timeout,
        external_traffic_policy=etp, internal_traffic_policy=itp, health_check_node_port=hc_port,
        traffic_distribution=distribution, labels=tuple(sorted(labels.items())),
    )


def _condition(r: _Reader, conds: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    return r.get(conds, key, f"{path}.conditions.{key}", bool, default)


def parse_endpoint_slice(obj: Mapping[str, Any]) -> EndpointSlice:
    """One parser for the API, manifests and the lab: the fast path for the common shape,
    the general one (which names the field of any error) for the rest."""
    try:
        return fast_endpoint_slice(obj)
    except NotCommon:
        return parse_endpoint_slice_general(obj)


def parse_endpoint_slice_general(obj: Mapping[str, Any]) -> EndpointSlice:
    """Every field checked and named on error; the reference the fast path is tested against."""
    r = _Reader("EndpointSlice", obj)
    ns, name, labels = _metadata(r, obj)
    service = labels.get(LABEL_SERVICE_NAME, "")
    if not service:
        raise r.fail(f"metadata.labels[{LABEL_SERVICE_NAME}]", "is required (which Service owns this slice?)")
    r.name(service, f"metadata.labels[{LABEL_SERVICE_NAME}]", DNS1035_LABEL)
    addr_type = r.choice(r.get(obj, "addressType", "addressType", str), "addressType", ("IPv4", "IPv6", "FQDN"))
    family = {"IPv4": 4, "IPv6": 6}.get(addr_type)

    ports = []
    for p, port in r.items(obj, "ports", "ports"):
        if not isinstance(port, dict):
            raise r.fail(p, f"must be a mapping, got {shown(port)}")
        number = r.port(port, "port", f"{p}.port", None)
        pname = r.get(port, "name", f"{p}.name", str, "")
        if pname:
            r.name(pname, f"{p}.name", DNS1123_LABEL)
        proto = r.choice(r.get(port, "protocol", f"{p}.protocol", str, "TCP"), f"{p}.protocol", PROTOCOLS)
        if number:  # a port without a number means "all ports"; kube-proxy ignores it
            ports.append(EndpointPort(pname, proto, number))  # type: ignore[arg-type]

    endpoints = []
    for p, ep in r.items(obj, "endpoints", "endpoints"):
        if not isinstance(ep, dict):
            raise r.fail(p, f"must be a mapping, got {shown(ep)}")
        raw = r.get(ep, "addresses", f"{p}.addresses", list)
        if not raw:
            raise r.fail(f"{p}.addresses", "must hold at least one address")
        if family:
            addrs = tuple(r.ip(a, f"{p}.addresses[{i}]", family) for i, a in enumerate(raw))
        else:
            addrs = tuple(str(a) for a in raw)
        conds = r.get(ep, "conditions", f"{p}.conditions", dict, {})
        ready = _condition(r, conds, "ready", p, True)
        serving = _condition(r, conds, "serving", p, ready)
        terminating = _condition(r, conds, "terminating", p, False)
        hints = r.get(ep, "hints", f"{p}.hints", dict, {})
        zones = _hint_names(r, hints, "forZones", f"{p}.hints.forZones")
        nodes = _hint_names(r, hints, "forNodes", f"{p}.hints.forNodes")
        node_name = r.get(ep, "nodeName", f"{p}.nodeName", str, "")
        if node_name:
            r.name(node_name, f"{p}.nodeName", DNS1123_SUBDOMAIN)
        endpoints.append(Endpoint(
            addresses=addrs, ready=ready, serving=serving, terminating=terminating,
            node_name=node_name,
            zone=r.get(ep, "zone", f"{p}.zone", str, ""), zone_hints=zones, node_hints=nodes,
        ))
    return EndpointSlice(ns, name, service, addr_type, tuple(ports), tuple(endpoints))


def _hint_names(r: _Reader, hints: Mapping[str, Any], key: str, path: str) -> frozenset[str]:
    names = []
    for p, item in r.items(hints, key, path):
        names.append(r.get(item if isinstance(item, dict) else {}, "name", f"{p}.name", str))
    return frozenset(names)


def parse_node(obj: Mapping[str, Any]) -> Node:
    r = _Reader("Node", obj)
    _, name, labels = _metadata(r, obj, namespaced=False)
    status = r.get(obj, "status", "status", dict, {})
    by_type: dict[str, list[str]] = {"InternalIP": [], "ExternalIP": []}
    for p, a in r.items(status, "addresses", "status.addresses"):
        if isinstance(a, dict) and a.get("type") in by_type:
            by_type[a["type"]].append(r.ip(a.get("address"), f"{p}.address"))
    spec = r.get(obj, "spec", "spec", dict, {})
    raw = r.get(spec, "podCIDRs", "spec.podCIDRs", list, [])
    cidrs = [r.cidr(c, f"spec.podCIDRs[{i}]") for i, c in enumerate(raw)]
    if not cidrs and spec.get("podCIDR"):  # written by hand with the old singular field only
        cidrs = [r.cidr(spec["podCIDR"], "spec.podCIDR")]
    # InternalIPs first, then ExternalIPs: the order kube-proxy's GetNodeHostIPs picks from
    return Node(name=name, labels=tuple(sorted(labels.items())),
                addresses=(*by_type["InternalIP"], *by_type["ExternalIP"]), pod_cidrs=tuple(cidrs))


def parse_service_cidr(obj: Mapping[str, Any]) -> ServiceCIDR:
    r = _Reader("ServiceCIDR", obj)
    _, name, _ = _metadata(r, obj, namespaced=False)
    spec = r.get(obj, "spec", "spec", dict, {})
    cidrs = tuple(r.cidr(c, f"spec.cidrs[{i}]") for i, c in enumerate(r.get(spec, "cidrs", "spec.cidrs", list, [])))
    return ServiceCIDR(name, cidrs)


PARSERS: dict[str, Callable[[Mapping[str, Any]], Service | EndpointSlice | Node | ServiceCIDR]] = {
    "Service": parse_service,
    "EndpointSlice": parse_endpoint_slice,
    "Node": parse_node,
    "ServiceCIDR": parse_service_cidr,
}
