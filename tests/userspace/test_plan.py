"""userspace mode's plan and endpoint choice, without root: which frontends, which endpoints."""

from __future__ import annotations

from pathlib import Path

from svcproxy.config import NodeConfig
from svcproxy.dataplane.userspace.balancer import Balancer
from svcproxy.dataplane.userspace.plan import is_cluster_client, plan
from svcproxy.model.load import load_paths
from svcproxy.state import build_state

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "cluster"
CFG = NodeConfig(hostname="test-node", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/16",))


def example_plan(cfg: NodeConfig = CFG):
    return plan(build_state(load_paths([EXAMPLES]), cfg), cfg)


def test_frontends_of_the_example_cluster():
    p = example_plan()
    web = p.frontends[("TCP", "172.30.0.10", 80)]
    assert web.kind == "cluster"
    assert web.internal == (("10.0.1.10", 8080), ("10.0.1.11", 8080), ("10.0.2.10", 8080))  # not terminating
    assert p.frontends[("TCP", "0.0.0.0", 30080)].kind == "nodeport"
    assert ("TCP", "172.30.0.50", 80) not in p.frontends  # empty: no listener, the kernel refuses
    assert {"172.30.0.50", "172.30.0.10", "192.168.100.30", "192.168.100.40"} <= p.addresses
    assert ("UDP", "172.30.0.53", 53) in p.frontends and ("TCP", "172.30.0.53", 53) in p.frontends
    assert p.frontends[("TCP", "172.30.0.30", 80)].affinity_timeout == 600
    assert p.frontends[("TCP", "192.168.100.40", 80)].source_ranges == ("192.168.0.0/30",)


def test_external_traffic_policy_local_on_a_node_without_local_endpoint():
    fe = example_plan().frontends[("TCP", "0.0.0.0", 30081)]  # local-web: its pod is on test-node-2
    assert fe.external == ()  # outside clients: nothing here
    assert fe.internal == (("10.0.2.30", 8080),)  # pods and the node itself: the cluster endpoints
    assert is_cluster_client("10.0.1.20", CFG) and is_cluster_client("192.168.0.2", CFG)
    assert not is_cluster_client("192.168.0.100", CFG)


def test_nodeport_addresses_limit_the_listeners():
    cfg = NodeConfig(hostname="test-node", node_ips=("192.168.0.2",), nodeport_addresses=("primary",))
    keys = {k for k in example_plan(cfg).frontends if k[2] == 30080}
    assert keys == {("TCP", "192.168.0.2", 30080)}


def test_round_robin_and_affinity():
    b = Balancer()
    eps = [("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)]
    assert [b.choose("c", eps, 0, 0.0) for _ in range(6)] == eps * 2
    sticky = Balancer()
    first = sticky.choose("c1", eps, 10, 0.0)
    assert [sticky.choose("c1", eps, 10, t) for t in (1.0, 9.0, 18.0)] == [first] * 3  # each use refreshes
    assert sticky.choose("c2", eps, 10, 18.0) != first  # another client goes round
    assert sticky.choose("c1", [e for e in eps if e != first], 10, 19.0) != first  # its endpoint left
    sticky.expire(100.0, 10)
    assert sticky._affinity == {}
    assert b.choose("c", [], 0, 0.0) is None


def test_cluster_clients_follow_the_local_traffic_detector() -> None:
    from dataclasses import replace

    from svcproxy.config import NodeConfig

    node = NodeConfig(hostname="test-node", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/8",))
    assert is_cluster_client("10.0.1.5", node) and is_cluster_client("192.168.0.2", node)
    assert not is_cluster_client("192.168.0.9", node)
    by_cidr = replace(node, detect_local_mode="NodeCIDR", node_pod_cidrs=("10.0.1.0/24",))
    assert is_cluster_client("10.0.1.5", by_cidr) and not is_cluster_client("10.0.2.5", by_cidr)
    bridge = replace(node, detect_local_mode="BridgeInterface", bridge_interface="cbr0")
    assert is_cluster_client("10.9.9.9", bridge, lambda ip: "cbr0")
    assert not is_cluster_client("10.0.1.5", bridge, lambda ip: "eth0")
    assert not is_cluster_client("10.0.1.5", bridge)  # interface unknown: not a pod
    prefix = replace(node, detect_local_mode="InterfaceNamePrefix", interface_name_prefix="veth")
    assert is_cluster_client("10.0.1.5", prefix, lambda ip: "veth1234")
