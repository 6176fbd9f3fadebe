"""Ask the tracer about a lab node's live ruleset: the same question real traffic answers."""

from __future__ import annotations

from ..netfilter import TraceResult, trace_packet
from .lab import Lab
from .plan import NodeSpec


def trace_live(lab: Lab, node: NodeSpec | str, source: str, destination: str, port: int,
               protocol: str = "TCP") -> TraceResult:
    """Trace a packet arriving at (or sent by) node through the rules its proxy programmed."""
    n = lab.node(node) if isinstance(node, str) else node
    rules = lab.rules(n, 6 if ":" in destination else 4)
    return trace_packet(rules, source, destination, port, protocol, local_addresses=lab.local_addresses(n))
