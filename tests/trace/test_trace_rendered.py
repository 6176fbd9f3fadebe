"""Traces of rulesets svcproxy renders (iptables and nftables) agree with the desired state."""

from __future__ import annotations

from pathlib import Path

import pytest

from svcproxy.config import NodeConfig, format_endpoint
from svcproxy.dataplane import renderer
from svcproxy.model.load import load_paths
from svcproxy.netfilter import trace_packet
from svcproxy.state import build_state

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "cluster"
CFG = NodeConfig(hostname="test-node", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/16",))
NODE = "192.168.0.2"
POD = "10.0.1.99"  # a pod on this node
OUTSIDE = "192.168.0.1"


@pytest.fixture(scope="module")
def state():
    return build_state(load_paths([EXAMPLES]), CFG)


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def rules(request, state) -> str:
    return renderer(request.param)(state, CFG)


def _ports(state):
    return [p for p in state.ports if p.cluster_ip]


def test_cluster_ips_reach_the_selected_endpoints_evenly(rules: str, state) -> None:
    checked = 0
    for port in _ports(state):
        sel = state.policy(port, CFG).selection
        want = sorted(format_endpoint(e.ip, e.port) for e in sel.cluster)
        r = trace_packet(rules, POD, port.cluster_ip, port.port, port.protocol, [NODE])
        if not want:
            assert r.verdict in ("REJECT", "DROP") and r.endpoints == [], port.name
            continue
        checked += 1
        assert r.verdict == "ACCEPT" and r.endpoints == want, str(port.name)
        assert not r.masquerade  # pod traffic (from the cluster CIDR) is not masqueraded
        for o in r.outcomes:
            assert abs(o.probability - 1 / len(want)) < 1e-6
        assert bool(r.affinity) == bool(port.session_affinity_timeout), str(port.name)
        # from the node itself: masqueraded, same endpoints
        r = trace_packet(rules, NODE, port.cluster_ip, port.port, port.protocol, [NODE])
        assert r.endpoints == want and r.masquerade
    assert checked >= 4


def test_node_ports_from_outside_are_masqueraded(rules: str, state) -> None:
    for port in state.ports:
        if not port.node_port:
            continue
        sel = state.policy(port, CFG).selection
        eps = sel.local if port.external_policy_local else sel.cluster
        want = sorted(format_endpoint(e.ip, e.port) for e in eps)
        r = trace_packet(rules, OUTSIDE, NODE, port.node_port, port.protocol, [NODE])
        if not want:
            assert r.verdict in ("DROP", "REJECT"), str(port.name)
            continue
        assert r.endpoints == want, str(port.name)
        assert r.masquerade != port.external_policy_local, str(port.name)


def test_load_balancer_source_ranges(rules: str, state) -> None:
    guarded = [p for p in state.ports if p.load_balancer_source_ranges and p.load_balancer_ips]
    assert guarded
    for port in guarded:
        lb = port.load_balancer_ips[0]
        assert trace_packet(rules, "203.0.113.250", lb, port.port, port.protocol, [NODE]).verdict == "DROP"
        import ipaddress
        net = ipaddress.ip_network(port.load_balancer_source_ranges[0])
        allowed = str(net.network_address + 1) if net.num_addresses > 1 else str(net.network_address)
        r = trace_packet(rules, allowed, lb, port.port, port.protocol, [NODE])
        assert r.verdict == "ACCEPT" and r.endpoints, str(port.name)


def test_both_modes_agree(state) -> None:
    ipt = renderer("iptables")(state, CFG)
    nft = renderer("nftables")(state, CFG)
    scenarios = []
    for port in state.ports:
        for src in (POD, NODE, OUTSIDE):
            if port.cluster_ip:
                scenarios.append((src, port.cluster_ip, port.port, port.protocol))
            for ip in (*port.external_ips, *port.load_balancer_ips):
                scenarios.append((src, ip, port.port, port.protocol))
            if port.node_port:
                scenarios.append((src, NODE, port.node_port, port.protocol))
    assert len(scenarios) > 20
    for s in scenarios:
        a = trace_packet(ipt, *s, local_addresses=[NODE])
        b = trace_packet(nft, *s, local_addresses=[NODE])
        assert (a.verdict, a.endpoints, a.masquerade) == (b.verdict, b.endpoints, b.masquerade), s
