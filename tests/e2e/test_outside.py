"""Traffic from outside the cluster to NodePorts, LoadBalancer IPs and externalIPs."""

from __future__ import annotations

import pytest

from svcproxy.lab.plan import OUTSIDE_IP

from .helpers import agree, errors, served, sources

pytestmark = pytest.mark.kernel
LAB_PREFIX = "e2b"

WEB_READY = {"web-1-10", "web-1-11", "web-2-10"}


@pytest.mark.parametrize("node,ip", [("test-node", "192.168.0.2"), ("test-node-2", "192.168.0.3")])
def test_node_port_from_outside_on_every_node_is_masqueraded(lab, node, ip):
    probes = lab.probe("outside", ip, 30080, count=40)
    assert served(probes) == WEB_READY
    assert OUTSIDE_IP not in sources(probes)  # eTP=Cluster: SNAT so replies return through this node
    agree(lab, node, OUTSIDE_IP, ip, 30080, probes, masquerade=True, exact=True)


def test_external_traffic_policy_local_keeps_client_address(lab):
    probes = lab.probe("outside", "192.168.0.3", 30081, count=10)
    assert served(probes) == {"local-web-2-30"}
    assert sources(probes) == {OUTSIDE_IP}
    agree(lab, "test-node-2", OUTSIDE_IP, "192.168.0.3", 30081, probes, masquerade=False, exact=True)
    # The node without a local endpoint drops (the load balancer's health check steers clients away).
    probes = lab.probe("outside", "192.168.0.2", 30081, count=2, timeout=0.5)
    assert [p.error for p in probes] == ["timeout"] * 2, errors(probes)
    agree(lab, "test-node", OUTSIDE_IP, "192.168.0.2", 30081, probes)


def test_external_traffic_policy_local_through_the_load_balancer_ip(lab):
    lab.route_external_via("test-node-2")
    try:
        probes = lab.probe("outside", "192.168.100.20", 80, count=10)
        assert served(probes) == {"local-web-2-30"}
        assert sources(probes) == {OUTSIDE_IP}
        agree(lab, "test-node-2", OUTSIDE_IP, "192.168.100.20", 80, probes, masquerade=False)
    finally:
        lab.route_external_via("test-node")
    probes = lab.probe("outside", "192.168.100.20", 80, count=2, timeout=0.5)
    assert [p.error for p in probes] == ["timeout"] * 2, errors(probes)
    agree(lab, "test-node", OUTSIDE_IP, "192.168.100.20", 80, probes)


def test_load_balancer_ip_from_outside(lab):
    probes = lab.probe("outside", "192.168.100.41", 80, count=10)
    assert served(probes) == {"open-lb-2-50"}
    assert OUTSIDE_IP not in sources(probes)
    agree(lab, "test-node", OUTSIDE_IP, "192.168.100.41", 80, probes, masquerade=True, exact=True)


def test_source_ranges_let_in_only_what_they_list(lab):
    # guarded lists 192.168.0.0/30, which does not hold the outside client: dropped.
    probes = lab.probe("outside", "192.168.100.40", 80, count=2, timeout=0.5)
    assert [p.error for p in probes] == ["timeout"] * 2, errors(probes)
    agree(lab, "test-node", OUTSIDE_IP, "192.168.100.40", 80, probes)
    # open-lb lists 192.168.0.100/32: let in (see test_load_balancer_ip_from_outside); so is a
    # client the range lists on guarded: test-node-2 (192.168.0.3) itself.
    probes = lab.probe("test-node-2", "192.168.100.40", 80, count=5)
    assert served(probes) == {"guarded-1-50"}
    agree(lab, "test-node-2", "192.168.0.3", "192.168.100.40", 80, probes)


def test_external_ip_from_outside_with_affinity(lab):
    probes = lab.probe("outside", "192.168.100.30", 80, count=10)
    assert len(served(probes)) == 1  # sticky: ClientIP affinity
    assert served(probes) <= {"sticky-1-40", "sticky-2-40"}
    agree(lab, "test-node", OUTSIDE_IP, "192.168.100.30", 80, probes)
