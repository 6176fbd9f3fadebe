"""Every ruleset rendered from valid generated input is accepted by nft (check mode, in a netns)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svcproxy.config import NodeConfig
from svcproxy.dataplane.nftables.render import render_ruleset
from svcproxy.state import EndpointInfo, ProxyState, ServicePortInfo, ServicePortName, ServiceState

from .conftest import Netns

pytestmark = pytest.mark.kernel

V4 = NodeConfig(hostname="test-node", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/16",))
V6 = NodeConfig(hostname="test-node", ip_family=6, node_ips=("fd00::2",), cluster_cidrs=("fd00:10::/64",))


def addr(family: int, base: str):
    net = ipaddress.ip_network(base)
    return st.integers(1, 250).map(lambda i: str(net[i]))


@st.composite
def services(draw, family: int) -> ProxyState:
    state = ProxyState()
    pod = "10.0.1.0/24" if family == 4 else "fd00:10::/120"
    vip = "172.30.0.0/24" if family == 4 else "fd00:30::/120"
    ext = "192.168.100.0/24" if family == 4 else "2001:db8::/120"
    rng = "203.0.113.0/24" if family == 4 else "2001:db8:1::/64"
    used_vips = set()
    for i in range(draw(st.integers(1, 4))):
        ports, eps = [], {}
        cluster_ip = draw(addr(family, vip).filter(lambda a: a not in used_vips))
        used_vips.add(cluster_ip)
        kind = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
        for j in range(draw(st.integers(1, 2))):
            proto = draw(st.sampled_from(["TCP", "UDP", "SCTP"]))
            spn = ServicePortName(f"ns{i}", f"svc{i}", f"p{j}", proto)
            lb = tuple(draw(st.lists(addr(family, ext), max_size=2, unique=True))) if kind == "LoadBalancer" else ()
            ports.append(ServicePortInfo(
                spn, cluster_ip, 80 + j, proto, 8080,
                node_port=30000 + 10 * i + j if kind != "ClusterIP" else 0,
                external_ips=tuple(draw(st.lists(addr(family, ext), max_size=2, unique=True))),
                load_balancer_ips=lb,
                load_balancer_source_ranges=(rng,) if lb and draw(st.booleans()) else (),
                session_affinity_timeout=draw(st.sampled_from([0, 0, 10800])),
                external_policy_local=kind != "ClusterIP" and draw(st.booleans()),
                internal_policy_local=draw(st.booleans()),
            ))
            eps[spn] = tuple(sorted({EndpointInfo(draw(addr(family, pod)), draw(st.integers(1, 65535)),
                                                  is_local=(loc := draw(st.booleans())),
                                                  ready=(r := draw(st.booleans())), serving=r or draw(st.booleans()),
                                                  terminating=not r, node_name="test-node" if loc else "n2")
                                     for _ in range(draw(st.integers(0, 4)))}, key=str))
        state.services[f"ns{i}/svc{i}"] = ServiceState(f"ns{i}/svc{i}", tuple(ports), eps)
    return state


@pytest.fixture(scope="module")
def check_ns():
    import subprocess

    from .conftest import make_netns

    ns = make_netns("chk")
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], check=False)


def nft_check(ns: Netns, text: str) -> None:
    res = ns.nft("-c", "-f", "-", input=text, check=False)
    assert res.returncode == 0, res.stderr + "\n" + text


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=services(4), masq=st.booleans(), nodeports=st.sampled_from([(), ("192.168.0.0/24",), ("primary",)]))
def test_ipv4_rulesets_are_accepted(check_ns: Netns, state: ProxyState, masq: bool, nodeports) -> None:
    nft_check(check_ns, render_ruleset(state, replace(V4, masquerade_all=masq, nodeport_addresses=nodeports)))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=services(6))
def test_ipv6_rulesets_are_accepted(check_ns: Netns, state: ProxyState) -> None:
    nft_check(check_ns, render_ruleset(state, V6))
