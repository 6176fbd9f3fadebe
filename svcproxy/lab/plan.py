"""What a lab looks like, computed from manifests before anything touches the kernel.

A pure function of the manifests and the node count: the nodes (name, address, pod CIDR),
the pods (one per endpoint address, on the node its EndpointSlice names, serving every
endpoint port), and every namespace/interface name, all derived from the lab's prefix.

Dual-stack (`lab up --dual-stack`, or manifests with IPv6 EndpointSlices or ClusterIPs): every
IPv4 address of the lab has an IPv6 twin, written with the same numbers, so a reader can pair
them at a glance: node 192.168.0.2 is fd00:192:168::2, pod CIDR 10.0.1.0/24 is fd00:10:0:1::/64
and pod 10.0.1.10 is fd00:10:0:1::10. An IPv6 endpoint must be the twin of an IPv4 one: that
is how a pod gets its second address (one pod, both families, as in Kubernetes).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from ..model.load import Objects, load_paths, manifest_files, raw_objects, read_file
from ..model.objects import Service

CLUSTER_CIDR = "10.0.0.0/8"
LAN_CIDR = "192.168.0.0/24"
LAN_GATEWAY = "192.168.0.1"
OUTSIDE_IP = "192.168.0.100"
EXTERNAL_CIDR = "192.168.100.0/24"  # LoadBalancer ingress IPs and externalIPs
# the IPv6 twins (dual-stack labs)
CLUSTER_CIDR6 = "fd00:10::/48"
LAN6_PREFIXLEN = 64
LAN6_GATEWAY = "fd00:192:168::1"
OUTSIDE_IP6 = "fd00:192:168::100"
EXTERNAL_CIDR6 = "fd00:192:168:100::/64"
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,5}$")


class LabError(RuntimeError):
    """The lab cannot do what was asked; the message says what to do instead."""


@dataclass(frozen=True)
class NodeSpec:
    name: str
    index: int  # 1-based: node i has namespace <prefix>-n<i>
    ip: str
    pod_cidr: str
    zone: str = ""
    ip6: str = ""  # dual-stack labs: the IPv6 twins of ip and pod_cidr
    pod_cidr6: str = ""

    @property
    def gateway(self) -> str:
        """The node's address on its pod bridge: the pods' default gateway (10.0.i.1)."""
        return str(next(ipaddress.ip_network(self.pod_cidr).hosts()))

    @property
    def gateway6(self) -> str:
        return twin6(self.gateway) if self.pod_cidr6 else ""

    @property
    def ips(self) -> tuple[str, ...]:
        return (self.ip, self.ip6) if self.ip6 else (self.ip,)

    @property
    def pod_prefixlen(self) -> int:
        return ipaddress.ip_network(self.pod_cidr).prefixlen


@dataclass(frozen=True)
class PodSpec:
    name: str
    ip: str
    node: str
    tcp_ports: tuple[int, ...] = ()
    udp_ports: tuple[int, ...] = ()
    ip6: str = ""  # dual-stack labs: the pod's IPv6 address (its IPv4 address's twin)


def twin6(ip: str) -> str:
    """The IPv6 twin of a lab IPv4 address: the same numbers under fd00 (a.b.c.d -> fd00:a:b:c::d;
    the LAN 192.168.0.d -> fd00:192:168::d)."""
    a, b, c, d = ip.split(".")
    if (a, b, c) == ("192", "168", "0"):
        return str(ipaddress.ip_address(f"fd00:192:168::{d}"))
    return str(ipaddress.ip_address(f"fd00:{a}:{b}:{c}::{d}"))


def twin6_cidr(cidr: str) -> str:
    """The IPv6 twin of a pod CIDR (a /64 per IPv4 /24 or smaller)."""
    a, b, c, _ = ipaddress.ip_network(cidr).network_address.exploded.split(".")
    return f"fd00:{a}:{b}:{c}::/64"


@dataclass(frozen=True)
class LabPlan:
    nodes: tuple[NodeSpec, ...]
    pods: tuple[PodSpec, ...]
    services: tuple[Service, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @property
    def dual_stack(self) -> bool:
        return bool(self.nodes and self.nodes[0].ip6)

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise LabError(f"no node {name!r} in this lab (nodes: {', '.join(n.name for n in self.nodes)})")


@dataclass(frozen=True)
class Names:
    """Every namespace and interface name of one lab; all start with the prefix.

    Interface names stay within the kernel's 15 characters (prefix <= 6 characters).
    """

    prefix: str

    def __post_init__(self) -> None:
        if not PREFIX_RE.match(self.prefix):
            raise LabError(f"lab prefix {self.prefix!r} must be 1-6 lowercase letters/digits, starting "
                           "with a letter (it starts every namespace and interface name)")

    @property
    def lan_ns(self) -> str:
        return f"{self.prefix}-lan"

    @property
    def outside_ns(self) -> str:
        return f"{self.prefix}-out"

    def node_ns(self, node: NodeSpec) -> str:
        return f"{self.prefix}-n{node.index}"

    def pod_ns(self, pod: PodSpec) -> str:
        return f"{self.prefix}-{pod.ip}"

    @property
    def lan_bridge(self) -> str:
        return f"{self.prefix}-br"

    @property
    def uplink(self) -> str:
        """The LAN-facing interface inside a node or the outside namespace."""
        return f"{self.prefix}-up"

    def lan_port(self, node: NodeSpec | None) -> str:
        """The LAN bridge's port towards a node (or towards the outside client)."""
        return f"{self.prefix}-n{node.index}" if node else f"{self.prefix}-o"

    @property
    def pod_bridge(self) -> str:
        return f"{self.prefix}-cbr"

    @property
    def pod_eth(self) -> str:
        return f"{self.prefix}-eth"

    def pod_port(self, pod: PodSpec, node: NodeSpec) -> str:
        """The node-side end of a pod's veth, named by the pod's offset in the pod CIDR."""
        offset = int(ipaddress.ip_address(pod.ip)) - int(ipaddress.ip_network(node.pod_cidr).network_address)
        return f"{self.prefix}-v{offset}"

    def owns(self, name: str) -> bool:
        return name.startswith(self.prefix + "-")


def default_node(index: int) -> NodeSpec:
    """Node i as in examples/cluster/nodes.yaml: test-node, test-node-2, ...; 192.168.0.(i+1)."""
    name = "test-node" if index == 1 else f"test-node-{index}"
    return NodeSpec(name, index, f"192.168.0.{index + 1}", f"10.0.{index}.0/24")


def read_nodes(paths: Iterable[str | Path]) -> list[NodeSpec]:
    """Node objects in the manifests: name, InternalIP and spec.podCIDR (the model keeps no pod CIDR)."""
    nodes: list[NodeSpec] = []
    for f in manifest_files(paths):
        docs, _ = read_file(f)  # load_paths reports what cannot be read
        for _, doc in raw_objects(docs):
            if doc.get("kind") != "Node":
                continue
            meta, spec, status = (doc.get(k) or {} for k in ("metadata", "spec", "status"))
            name = meta.get("name")
            ips = [a.get("address") for a in status.get("addresses") or [] if a.get("type") == "InternalIP"]
            index = len(nodes) + 1
            default = default_node(index)
            labels = meta.get("labels") or {}
            nodes.append(NodeSpec(name or default.name, index, ips[0] if ips else default.ip,
                                  spec.get("podCIDR") or default.pod_cidr,
                                  labels.get("topology.kubernetes.io/zone", "")))
    return nodes


def plan_nodes(paths: Iterable[str | Path], count: int | None, dual_stack: bool = False) -> tuple[NodeSpec, ...]:
    """The manifests' nodes, cut or extended with default nodes to count (default: 2 or as listed);
    dual_stack gives each its IPv6 twins."""
    nodes = read_nodes(paths)
    want = count if count is not None else max(len(nodes), 2)
    if want < 1:
        raise LabError("--nodes must be at least 1")
    nodes = nodes[:want]
    while len(nodes) < want:
        nodes.append(default_node(len(nodes) + 1))
    lan = ipaddress.ip_network(LAN_CIDR)
    for n in nodes:
        try:
            if ipaddress.ip_address(n.ip) not in lan:
                raise LabError(f"Node {n.name}: status.addresses InternalIP {n.ip} is outside the lab LAN "
                               f"{LAN_CIDR}; give it an address there")
            net = ipaddress.ip_network(n.pod_cidr)
        except ValueError as e:
            raise LabError(f"Node {n.name}: {e}") from None
        if net.version != 4 or not net.subnet_of(ipaddress.ip_network(CLUSTER_CIDR)):
            raise LabError(f"Node {n.name}: spec.podCIDR {n.pod_cidr} must lie inside {CLUSTER_CIDR}")
    if len({n.ip for n in nodes}) != len(nodes) or len({n.name for n in nodes}) != len(nodes):
        raise LabError("two nodes share a name or an address; fix the Node objects")
    if dual_stack:
        for n in nodes:
            if ipaddress.ip_network(n.pod_cidr).prefixlen < 24:
                raise LabError(f"Node {n.name}: spec.podCIDR {n.pod_cidr}: a dual-stack lab needs a /24 or "
                               "smaller per node (its IPv6 twin is a /64)")
        nodes = [replace(n, ip6=twin6(n.ip), pod_cidr6=twin6_cidr(n.pod_cidr)) for n in nodes]
    return tuple(nodes)


def plan_pods(objects: Objects, nodes: tuple[NodeSpec, ...]) -> tuple[tuple[PodSpec, ...], tuple[str, ...]]:
    """One pod per endpoint address, on the node its endpoint names, serving all its ports."""
    by_name = {n.name: n for n in nodes}
    pods: dict[str, dict] = {}
    warnings: list[str] = []
    dual = bool(nodes and nodes[0].ip6)
    v6_slices = []
    for sl in sorted(objects.slices, key=lambda s: (s.namespace, s.name)):
        if sl.address_type == "IPv6" and dual:
            v6_slices.append(sl)
            continue
        if sl.address_type != "IPv4":
            warnings.append(f"EndpointSlice {sl.key}: addressType {sl.address_type}: this lab is IPv4 only "
                            "(lab up --dual-stack adds IPv6); no pods made for it")
            continue
        for i, ep in enumerate(sl.endpoints):
            ip = ep.addresses[0]
            addr = ipaddress.ip_address(ip)
            where = f"EndpointSlice {sl.key}: endpoints[{i}]"
            node = by_name.get(ep.node_name) if ep.node_name else next(
                (n for n in nodes if addr in ipaddress.ip_network(n.pod_cidr)), None)
            if node is None:
                raise LabError(f"{where}.nodeName: node {ep.node_name or '(none)'!s} is not in this lab "
                               f"(nodes: {', '.join(by_name)}); fix nodeName or add the Node / --nodes")
            if addr not in ipaddress.ip_network(node.pod_cidr):
                raise LabError(f"{where}.addresses: {ip} is not in node {node.name}'s pod CIDR "
                               f"{node.pod_cidr}; give the pod an address there")
            pod = pods.setdefault(ip, {"node": node.name, "service": sl.service_name, "tcp": set(), "udp": set()})
            if pod["node"] != node.name:
                raise LabError(f"{where}: {ip} is placed on {pod['node']} by another slice, here on "
                               f"{node.name}; one pod has one node")
            for port in sl.ports:
                if port.protocol == "TCP":
                    pod["tcp"].add(port.port)
                elif port.protocol == "UDP":
                    pod["udp"].add(port.port)
                else:
                    warnings.append(f"{where}: the lab's pods serve TCP and UDP only, not {port.protocol}")
    twins = {twin6(ip): ip for ip in pods}
    for sl in v6_slices:  # an IPv6 endpoint is the second address of the pod it twins
        for i, ep in enumerate(sl.endpoints):
            ip6 = str(ipaddress.ip_address(ep.addresses[0]))
            where = f"EndpointSlice {sl.key}: endpoints[{i}].addresses"
            if ip6 not in twins:
                raise LabError(f"{where}: {ip6} is no pod's IPv6 address; in a dual-stack lab pod a.b.c.d "
                               "has fd00:a:b:c::d, and every IPv6 endpoint needs its IPv4 twin in an IPv4 "
                               "EndpointSlice")
            pod = pods[twins[ip6]]
            if ep.node_name and ep.node_name != pod["node"]:
                raise LabError(f"{where}: {ip6} is on {ep.node_name} here but its IPv4 twin is on "
                               f"{pod['node']}; one pod has one node")
            for port in sl.ports:
                if port.protocol in ("TCP", "UDP"):
                    pod[port.protocol.lower()].add(port.port)
    out = []
    for ip, p in sorted(pods.items(), key=lambda kv: ipaddress.ip_address(kv[0])):
        a, b, c, d = ip.split(".")
        out.append(PodSpec(f"{p['service']}-{c}-{d}", ip, p["node"], tuple(sorted(p["tcp"])), tuple(sorted(p["udp"])),
                           twin6(ip) if dual else ""))
    return tuple(out), tuple(warnings)


def wants_dual_stack(objects: Objects) -> bool:
    """The manifests speak IPv6: an IPv6 EndpointSlice or ClusterIP."""
    return (any(sl.address_type == "IPv6" for sl in objects.slices)
            or any(":" in ip for svc in objects.services for ip in svc.cluster_ips))


def make_plan(paths: Iterable[str | Path], node_count: int | None = None,
              nodes: tuple[NodeSpec, ...] | None = None, dual_stack: bool = False) -> LabPlan:
    """The lab for these manifests. nodes: keep a running lab's nodes (lab apply). dual_stack:
    give every node and pod an IPv6 address too (also chosen when the manifests speak IPv6)."""
    paths = list(paths)
    try:
        objects = load_paths(paths)
    except FileNotFoundError as e:
        raise LabError(str(e)) from None
    nodes = nodes or plan_nodes(paths, node_count, dual_stack or wants_dual_stack(objects))
    pods, warnings = plan_pods(objects, nodes)
    return LabPlan(nodes, pods, tuple(objects.services), tuple(objects.errors) + warnings)


def nodes_manifest(nodes: Iterable[NodeSpec]) -> str:
    """The lab's nodes as a v1 List, so every proxy sees its own Node (zone label) as in a cluster."""
    items = []
    for n in nodes:
        labels = {"kubernetes.io/hostname": n.name}
        if n.zone:
            labels["topology.kubernetes.io/zone"] = n.zone
        items.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n.name, "labels": labels},
                      "spec": {"podCIDR": n.pod_cidr},
                      "status": {"addresses": [{"type": "InternalIP", "address": ip} for ip in n.ips]}})
    return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}, sort_keys=False)


def manifest_text(paths: Iterable[str | Path], nodes: Iterable[NodeSpec]) -> str:
    """The proxies' manifest: the lab's nodes, then every non-Node document of paths (files that
    do not parse are passed through unchanged so the proxies report them as they would)."""
    parts = [nodes_manifest(nodes)]
    for f in manifest_files(paths):
        parsed, errors = read_file(f)
        if errors:
            parts.append(f.read_text())
            continue
        docs = [d for _, d in raw_objects(parsed) if d.get("kind") != "Node"]
        if docs:
            parts.append(yaml.safe_dump_all(docs, sort_keys=False))
    return "---\n".join(p if p.endswith("\n") else p + "\n" for p in parts)
