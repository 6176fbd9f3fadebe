"""Traffic from inside the cluster (pods and nodes) to Services, on the real kernel."""

from __future__ import annotations

import pytest

from .helpers import agree, errors, served, sources

pytestmark = pytest.mark.kernel
LAB_PREFIX = "e2a"

WEB = ("172.30.0.10", 80)
WEB_READY = {"web-1-10", "web-1-11", "web-2-10"}  # web-2-11 is terminating: no new connections


def test_cluster_ip_spreads_over_ready_endpoints_and_keeps_pod_source(lab):
    probes = lab.probe("dns-1-20", *WEB, count=40)
    assert served(probes) == WEB_READY
    assert sources(probes) == {"10.0.1.20"}  # pod -> service: the pod's own address is kept
    agree(lab, "test-node", "10.0.1.20", *WEB, probes, masquerade=False, exact=True)


def test_cluster_ip_from_a_pod_on_the_other_node(lab):
    probes = lab.probe("dns-2-20", *WEB, count=40)
    assert served(probes) == WEB_READY
    assert sources(probes) == {"10.0.2.20"}
    agree(lab, "test-node-2", "10.0.2.20", *WEB, probes, masquerade=False, exact=True)


def test_cluster_ip_from_the_node_is_masqueraded(lab):
    probes = lab.probe("test-node", *WEB, count=40)
    assert served(probes) == WEB_READY
    by_pod = {p.served_by: p.source_ip for p in probes}
    # Masqueraded to the address of the interface the packet leaves by: the pod bridge for local pods.
    assert by_pod["web-1-10"] == by_pod["web-1-11"] == "10.0.1.1"
    assert by_pod["web-2-10"] == "192.168.0.2"
    agree(lab, "test-node", "192.168.0.2", *WEB, probes, masquerade=True, exact=True)


def test_service_without_endpoints_is_refused_at_once(lab):
    for where, src, node in [("web-1-10", "10.0.1.10", "test-node"), ("test-node-2", "192.168.0.3", "test-node-2")]:
        probes = lab.probe(where, "172.30.0.50", 80, count=3, timeout=2.0)
        assert [p.error for p in probes] == ["refused"] * 3, errors(probes)
        assert max(p.ms for p in probes) < 500  # a refusal, not a timeout
        agree(lab, node, src, "172.30.0.50", 80, probes)


def test_client_ip_affinity_sticks(lab):
    for where, src, node in [("dns-1-20", "10.0.1.20", "test-node"), ("test-node-2", "192.168.0.3", "test-node-2")]:
        probes = lab.probe(where, "172.30.0.30", 80, count=15)
        assert len(served(probes)) == 1, [p.served_by for p in probes]
        agree(lab, node, src, "172.30.0.30", 80, probes)


def test_udp_spreads_and_keeps_pod_source(lab):
    probes = lab.probe("web-1-11", "172.30.0.53", 53, udp=True, count=30)
    assert served(probes) == {"dns-1-20", "dns-2-20"}
    assert sources(probes) == {"10.0.1.11"}
    agree(lab, "test-node", "10.0.1.11", "172.30.0.53", 53, probes, protocol="UDP", masquerade=False,
          exact=True)


def test_hairpin_pod_reaches_itself_through_its_service(lab):
    probes = lab.probe("web-1-10", *WEB, count=40)
    assert served(probes) == WEB_READY
    by_pod = {p.served_by: p.source_ip for p in probes}
    assert by_pod["web-1-10"] == "10.0.1.1"  # hairpin: masqueraded, or the reply would skip the node
    assert by_pod["web-2-10"] == "10.0.1.10"
    agree(lab, "test-node", "10.0.1.10", *WEB, probes, exact=True)


def test_internal_traffic_policy_local(lab):
    probes = lab.probe("dns-1-20", "172.30.0.60", 80, count=10)
    assert served(probes) == {"itp-1-60"}
    assert sources(probes) == {"10.0.1.20"}
    agree(lab, "test-node", "10.0.1.20", "172.30.0.60", 80, probes, exact=True)
    probes = lab.probe("dns-2-20", "172.30.0.60", 80, count=2, timeout=0.5)
    assert [p.error for p in probes] == ["timeout"] * 2, errors(probes)  # no local endpoint: dropped
    agree(lab, "test-node-2", "10.0.2.20", "172.30.0.60", 80, probes)


def test_node_port_from_a_pod_and_from_the_node_is_masqueraded(lab):
    probes = lab.probe("dns-1-20", "192.168.0.3", 30080, count=40)
    assert served(probes) == WEB_READY
    # test-node forwards the packet untouched; test-node-2 owns the address, DNATs and masquerades.
    assert sources(probes) == {"192.168.0.3", "10.0.2.1"}
    agree(lab, "test-node-2", "10.0.1.20", "192.168.0.3", 30080, probes, masquerade=True, exact=True)
    probes = lab.probe("test-node", "192.168.0.2", 30080, count=40)  # the node's own NodePort
    assert served(probes) == WEB_READY
    assert {p.source_ip for p in probes if p.served_by == "web-1-10"} == {"10.0.1.1"}
    agree(lab, "test-node", "192.168.0.2", "192.168.0.2", 30080, probes, masquerade=True, exact=True)


def test_external_traffic_policy_local_from_inside_uses_every_endpoint(lab):
    # kube-proxy short-circuits pod and node traffic to an eTP=Local NodePort to all endpoints, so a
    # node without a local endpoint still answers its own pods (keeping their address) and itself.
    probes = lab.probe("dns-1-20", "192.168.0.2", 30081, count=5)
    assert served(probes) == {"local-web-2-30"}
    assert sources(probes) == {"10.0.1.20"}
    agree(lab, "test-node", "10.0.1.20", "192.168.0.2", 30081, probes, masquerade=False, exact=True)
    probes = lab.probe("test-node", "192.168.0.2", 30081, count=5)
    assert served(probes) == {"local-web-2-30"}
    assert sources(probes) == {"192.168.0.2"}  # masqueraded to the node's address towards test-node-2
    agree(lab, "test-node", "192.168.0.2", "192.168.0.2", 30081, probes, masquerade=True, exact=True)
