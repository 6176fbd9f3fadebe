"""The packet tracer: parse a ruleset (iptables-save, nft text or nft -j JSON), walk a packet
through netfilter's hooks, tables and chains, and report every outcome with its probability.

    from svcproxy.netfilter import trace_packet
    result = trace_packet(open("rules").read(), "10.0.1.5", "172.30.0.10", 80)
    result.verdict, result.endpoints, result.masquerade, result.to_json()
"""

from __future__ import annotations

from .core import TraceError
from .picture import render_svg
from .result import Outcome, TraceResult
from .text import render_text
from .trace import parse_rules, trace_packet, trace_ruleset

__all__ = ["TraceError", "TraceResult", "Outcome", "trace_packet", "trace_ruleset", "parse_rules", "render_text",
           "render_svg"]
