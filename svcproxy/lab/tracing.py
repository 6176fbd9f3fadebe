"""Ask the tracer about a lab node's live ruleset: the same question real traffic answers."""

from __future__ import annotations

from ..netfilter import TraceResult, trace_packet
from .lab import Lab
from .plan import NodeSpec


def arrival_interface(lab: Lab, node: NodeSpec, source: str) -> str:
    """The interface a packet from source enters node by: its pod bridge for the node's own pods,
    its LAN uplink for the rest (other nodes, their pods, outside). The interface detect-local
    modes match on it."""
    for pod in lab.pods:
        if pod.node == node.name and source in (pod.ip, pod.ip6):
            return lab.names.pod_bridge
    return lab.names.uplink


def trace_live(lab: Lab, node: NodeSpec | str, source: str, destination: str, port: int,
               protocol: str = "TCP") -> TraceResult:
    """Trace a packet arriving at (or sent by) node through the rules its proxy programmed."""
    n = lab.node(node) if isinstance(node, str) else node
    rules = lab.rules(n, 6 if ":" in destination else 4)
    return trace_packet(rules, source, destination, port, protocol, local_addresses=lab.local_addresses(n),
                        in_interface=arrival_interface(lab, n, source))
