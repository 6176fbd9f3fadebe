"""The lab's links, addresses and routes as `ip` commands: pure functions of the plan.

Kept apart from running them (lab.py, netns.py) so the topology can be read, and tested,
without root. Each function returns the commands for one namespace, in `ip -batch` form.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterable
from pathlib import Path

from .plan import (
    EXTERNAL_CIDR,
    EXTERNAL_CIDR6,
    LAN6_GATEWAY,
    LAN6_PREFIXLEN,
    LAN_CIDR,
    LAN_GATEWAY,
    OUTSIDE_IP,
    OUTSIDE_IP6,
    Names,
    NodeSpec,
    PodSpec,
)

LAN_PREFIXLEN = ipaddress.ip_network(LAN_CIDR).prefixlen
SERVER = Path(__file__).with_name("server.py")

# route_localnet is not here: `svcproxy run` sets it itself in iptables mode, as kube-proxy does
# (runtime/node_setup.py), and nftables mode has no NodePorts on 127.0.0.1
NODE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",  # nodes route between pods, nodes and the outside
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
}
# With br_netfilter, pod traffic bridged on the node passes conntrack, so a reply from a pod on
# the same bridge is un-DNATed (kube-proxy relies on it).
BR_NETFILTER_SYSCTLS = {"net.bridge.bridge-nf-call-iptables": "1"}
BR_NETFILTER_SYSCTLS6 = {"net.bridge.bridge-nf-call-ip6tables": "1"}
# dual-stack labs: nodes route IPv6 too
NODE_SYSCTLS6 = {"net.ipv6.conf.all.forwarding": "1"}


def lan(names: Names, nodes: Iterable[NodeSpec]) -> list[str]:
    """In <p>-lan: the bridge, and a veth to each node and to the outside client."""
    br = names.lan_bridge
    nodes = list(nodes)
    cmds = [f"link add {br} type bridge", f"addr add {LAN_GATEWAY}/{LAN_PREFIXLEN} dev {br}", f"link set {br} up"]
    if nodes and nodes[0].ip6:
        cmds.insert(2, f"addr add {LAN6_GATEWAY}/{LAN6_PREFIXLEN} dev {br} nodad")
    for node in [*nodes, None]:
        peer_ns = names.node_ns(node) if node else names.outside_ns
        port = names.lan_port(node)
        cmds += [f"link add {port} type veth peer name {names.uplink} netns {peer_ns}",
                 f"link set {port} master {br}", f"link set {port} up"]
    return cmds


def node(names: Names, node: NodeSpec, nodes: Iterable[NodeSpec]) -> list[str]:
    """In a node: its LAN address, its pod bridge (the pods' gateway) and routes to other pod CIDRs."""
    up, cbr = names.uplink, names.pod_bridge
    cmds = [f"addr add {node.ip}/{LAN_PREFIXLEN} dev {up}", f"link set {up} up",
            f"link add {cbr} type bridge", f"addr add {node.gateway}/{node.pod_prefixlen} dev {cbr}",
            f"link set {cbr} up", f"route add default via {LAN_GATEWAY}"]
    others = [o for o in nodes if o.name != node.name]
    cmds += [f"route add {o.pod_cidr} via {o.ip}" for o in others]
    if node.ip6:
        cmds += [f"addr add {node.ip6}/{LAN6_PREFIXLEN} dev {up} nodad",
                 f"addr add {node.gateway6}/64 dev {cbr} nodad", f"route add default via {LAN6_GATEWAY}"]
        cmds += [f"route add {o.pod_cidr6} via {o.ip6}" for o in others]
    return cmds


def outside(names: Names, via: NodeSpec) -> list[str]:
    """In <p>-out: the client's address, and LoadBalancer/external IPs routed through one node."""
    up = names.uplink
    cmds = [f"addr add {OUTSIDE_IP}/{LAN_PREFIXLEN} dev {up}", f"link set {up} up",
            f"route add {EXTERNAL_CIDR} via {via.ip}", f"route add default via {LAN_GATEWAY}"]
    if via.ip6:
        cmds += [f"addr add {OUTSIDE_IP6}/{LAN6_PREFIXLEN} dev {up} nodad",
                 f"route add {EXTERNAL_CIDR6} via {via.ip6}", f"route add default via {LAN6_GATEWAY}"]
    return cmds


def external_route(via: NodeSpec) -> list[str]:
    cmds = [f"route replace {EXTERNAL_CIDR} via {via.ip}"]
    return cmds + ([f"route replace {EXTERNAL_CIDR6} via {via.ip6}"] if via.ip6 else [])


def pod_ports(names: Names, node: NodeSpec, pods: Iterable[PodSpec]) -> list[str]:
    """In a node: one veth per pod, its node end on the pod bridge, hairpin on so that a pod can
    reach itself through its own Service (the bridge sends the frame back out the same port)."""
    cmds = []
    for p in pods:
        port = names.pod_port(p, node)
        cmds += [f"link add {port} type veth peer name {names.pod_eth} netns {names.pod_ns(p)}",
                 f"link set {port} master {names.pod_bridge}",
                 f"link set dev {port} type bridge_slave hairpin on", f"link set {port} up"]
    return cmds


def pod(names: Names, node: NodeSpec, pod: PodSpec) -> list[str]:
    """In a pod: its endpoint address on the node's pod CIDR, default route via the node."""
    eth = names.pod_eth
    cmds = [f"addr add {pod.ip}/{node.pod_prefixlen} dev {eth}", f"link set {eth} up",
            f"route add default via {node.gateway}"]
    if pod.ip6:
        cmds += [f"addr add {pod.ip6}/64 dev {eth} nodad", f"route add default via {node.gateway6}"]
    return cmds


def server_argv(pod: PodSpec, ready_file: Path) -> list[str]:
    """The pod's server, answering on every endpoint port of the pod."""
    argv = [sys.executable, str(SERVER), "--name", pod.name, "--ip", pod.ip, "--ready-file", str(ready_file)]
    argv += ["--ip6", pod.ip6] if pod.ip6 else []
    argv += [a for port in pod.tcp_ports for a in ("--tcp", str(port))]
    return argv + [a for port in pod.udp_ports for a in ("--udp", str(port))]
