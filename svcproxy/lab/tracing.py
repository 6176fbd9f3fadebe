"""Ask the tracer about a lab node's live ruleset: the same question real traffic answers."""

from __future__ import annotations

from typing import Any

from .lab import Lab
from .plan import LabError, NodeSpec


def tracer() -> Any:
    """svcproxy.netfilter.trace_packet, or a LabError saying it is missing (never a silent skip)."""
    try:
        from ..netfilter import trace_packet
    except ImportError as e:
        raise LabError(f"the packet tracer (svcproxy.netfilter.trace_packet) is not available: {e}") from None
    return trace_packet


def trace_live(lab: Lab, node: NodeSpec | str, source: str, destination: str, port: int,
               protocol: str = "TCP") -> Any:
    """Trace a packet arriving at (or sent by) node through the rules its proxy programmed."""
    trace_packet = tracer()
    n = lab.node(node) if isinstance(node, str) else node
    rules = lab.rules(n, 6 if ":" in destination else 4)
    try:
        return trace_packet(rules, source, destination, port, protocol, local_addresses=lab.local_addresses(n))
    except ImportError as e:  # e.g. a ruleset format whose parser is not there
        raise LabError(f"the packet tracer cannot read {lab.mode} rulesets in this svcproxy: {e}") from None
