"""ServiceCIDR objects: traffic to an unallocated ClusterIP is dropped (kube-proxy's nftables rule)."""

from __future__ import annotations

from svcproxy.config import NodeConfig
from svcproxy.dataplane import renderer
from svcproxy.model import load_text
from svcproxy.state import build_state

MANIFESTS = """
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec: {cidrs: [172.30.0.0/16]}
---
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec: {clusterIP: 172.30.0.41, ports: [{name: p80, port: 80}]}
"""

DROP = 'ip daddr { 172.30.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"'


def test_drop_rule_follows_service_cidrs() -> None:
    cfg = NodeConfig(node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/8",))
    with_cidr = renderer("nftables")(build_state(load_text(MANIFESTS), cfg), cfg)
    assert DROP in with_cidr
    without = renderer("nftables")(build_state(load_text(MANIFESTS.split("---", 1)[1]), cfg), cfg)
    assert "unallocated" not in without
    # iptables mode has no such rule, as in kube-proxy.
    assert "172.30.0.0/16" not in renderer("iptables")(build_state(load_text(MANIFESTS), cfg), cfg)
