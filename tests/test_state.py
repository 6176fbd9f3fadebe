"""Desired state: family filtering, skipped services, slice merging and deduplication."""

from __future__ import annotations

from svcproxy.config import NodeConfig
from svcproxy.model import load_text
from svcproxy.state import build_state

CFG = NodeConfig(hostname="test-node", node_ips=("192.168.0.2",))

MANIFESTS = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns1}
spec:
  type: LoadBalancer
  clusterIPs: [172.30.0.41, "fd00::41"]
  externalIPs: [192.168.99.11, "2001:db8::11"]
  externalTrafficPolicy: Local
  healthCheckNodePort: 30000
  ports: [{name: p80, port: 80, nodePort: 3001}]
status: {loadBalancer: {ingress: [{ip: 1.2.3.4}, {ip: "2001:db8::1"}]}}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: ns1}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: ns1, labels: {service.kubernetes.io/service-proxy-name: foo}}
spec: {clusterIP: 172.30.0.50, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: ns1}
spec: {type: ExternalName, externalName: example.com}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: ns1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: p80, port: 8080}]
endpoints:
- {addresses: [10.180.0.2], nodeName: test-node}
- {addresses: [10.180.0.1], nodeName: other}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: ns1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: p80, port: 8080}]
endpoints:
- {addresses: [10.180.0.1], nodeName: other}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: ns1, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: p80, port: 8080}]
endpoints:
- {addresses: ["fd00:10::1"]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: orphan-1, namespace: ns1, labels: {kubernetes.io/service-name: orphan}}
addressType: IPv4
endpoints: []
"""


def test_ipv4_view() -> None:
    state = build_state(load_text(MANIFESTS), CFG)
    assert list(state.services) == ["ns1/web"]
    (p,) = state.ports
    assert str(p.name) == "ns1/web:p80"
    assert (p.cluster_ip, p.node_port, p.external_ips, p.load_balancer_ips) == \
        ("172.30.0.41", 3001, ("192.168.99.11",), ("1.2.3.4",))
    assert p.external_policy_local and p.health_check_node_port == 30000
    # Deduplicated across slices, sorted by ip:port, locality from nodeName.
    assert [(str(e), e.is_local) for e in state.endpoints(p.name)] == [("10.180.0.1:8080", False),
                                                                      ("10.180.0.2:8080", True)]
    assert any("orphan-1" in e and "Service ns1/orphan not found" in e for e in state.errors)


def test_ipv6_view() -> None:
    state = build_state(load_text(MANIFESTS), NodeConfig(hostname="test-node", ip_family=6))
    (p,) = state.ports
    assert (p.cluster_ip, p.external_ips, p.load_balancer_ips) == ("fd00::41", ("2001:db8::11",), ("2001:db8::1",))
    assert [str(e) for e in state.endpoints(p.name)] == ["[fd00:10::1]:8080"]


def test_nodeport_addresses() -> None:
    cfg = NodeConfig(node_ips=("192.168.0.2",), local_addresses=("10.0.0.5", "192.168.1.9"),
                     nodeport_addresses=("192.168.0.0/16",))
    assert cfg.nodeport_ips == ("192.168.0.2", "192.168.1.9")
    assert NodeConfig(node_ips=("192.168.0.2",), nodeport_addresses=("primary",)).nodeport_ips == ("192.168.0.2",)
    assert NodeConfig(nodeport_addresses=("0.0.0.0/0",)).nodeport_ips is None
    assert NodeConfig().nodeport_ips is None
    # kube-proxy's NewNodePortAddresses: a family that none of the CIDRs names matches all of
    # its addresses (a dual-stack node with an IPv4-only list still answers on IPv6) ...
    v6 = NodeConfig(ip_family=6, node_ips=("fd00::2",), nodeport_addresses=("192.168.0.0/16",))
    assert v6.nodeport_ips is None
    assert NodeConfig(ip_family=6, node_ips=("fd00::2",), local_addresses=("fd00:1::9",),
                      nodeport_addresses=("192.168.0.0/16", "fd00::/64")).nodeport_ips == ("fd00::2",)
    # ... and so does "primary" for a family with no node IP, or only a loopback one
    assert NodeConfig(ip_family=6, node_ips=("192.168.0.2",), nodeport_addresses=("primary",)).nodeport_ips is None
    assert NodeConfig(node_ips=("127.0.0.1",), nodeport_addresses=("primary",)).nodeport_ips is None
