"""Each of kube-proxy's local-traffic detectors in iptables mode, on kube-proxy's own fixture
(TestOverallIPTablesRules: pods 10.0.0.0/8, ClusterIPs 172.30.0.0/16, node 192.168.0.2,
test-node): the detector's match is written where kube-proxy writes IfLocal / IfNotLocal and
nowhere else."""

from __future__ import annotations

import dataclasses

import pytest

from svcproxy.config import NodeConfig
from svcproxy.dataplane.iptables.render import BlockCache, build_ruleset, format_ruleset

from .conftest import NODE, state_from
from .test_render import OVERALL, OVERALL_EXPECTED, kube_proxy_sorted

IF_LOCAL, IF_NOT_LOCAL = "-s 10.0.0.0/8", "! -s 10.0.0.0/8"

DETECTORS = {
    # mode config -> (IfLocal, IfNotLocal) as kube-proxy's localdetector.go writes them
    "ClusterCIDR": (NODE, IF_LOCAL, IF_NOT_LOCAL),
    "ClusterCIDR-first-of-family": (dataclasses.replace(NODE, cluster_cidrs=("fd00:10::/64", "10.0.0.0/8",
                                                                             "10.128.0.0/9")), IF_LOCAL, IF_NOT_LOCAL),
    "NodeCIDR": (dataclasses.replace(NODE, detect_local_mode="NodeCIDR", node_pod_cidrs=("10.0.1.0/24",),
                                     cluster_cidrs=("10.0.0.0/8",)), "-s 10.0.1.0/24", "! -s 10.0.1.0/24"),
    "BridgeInterface": (dataclasses.replace(NODE, detect_local_mode="BridgeInterface", bridge_interface="cbr0"),
                        "-i cbr0", "! -i cbr0"),
    "InterfaceNamePrefix": (dataclasses.replace(NODE, detect_local_mode="InterfaceNamePrefix",
                                                interface_name_prefix="veth"), "-i veth+", "! -i veth+"),
}


def rendered(cfg: NodeConfig) -> str:
    return kube_proxy_sorted(format_ruleset(build_ruleset(state_from(OVERALL, cfg), cfg, BlockCache()), cfg,
                                            with_jumps=False))


@pytest.mark.parametrize("name", list(DETECTORS))
def test_each_detector_writes_its_match_where_kube_proxy_does(name: str) -> None:
    cfg, if_local, if_not_local = DETECTORS[name]
    expected = (OVERALL_EXPECTED.replace(f" {IF_NOT_LOCAL} -j KUBE-MARK-MASQ", f" {if_not_local} -j KUBE-MARK-MASQ")
                .replace(f" {IF_LOCAL} -j KUBE-SVC-", f" {if_local} -j KUBE-SVC-"))
    assert rendered(cfg) == expected
    # the five KUBE-SVC masquerade jumps and the one "pod traffic" short-circuit of svc2's KUBE-EXT
    assert expected.count(f" {if_not_local} -j KUBE-MARK-MASQ") == 5
    assert expected.count(f'external destinations" {if_local} -j KUBE-SVC-') == 1


@pytest.mark.parametrize("cfg", [
    dataclasses.replace(NODE, cluster_cidrs=()),
    dataclasses.replace(NODE, cluster_cidrs=("fd00:10::/64",)),  # none of this family
    dataclasses.replace(NODE, detect_local_mode="NodeCIDR"),  # the Node has no podCIDRs (yet)
    dataclasses.replace(NODE, detect_local_mode="NodeCIDR", node_pod_cidrs=("fd00:10:1::/64",)),
], ids=["no-cluster-cidr", "cluster-cidr-other-family", "no-pod-cidr", "pod-cidr-other-family"])
def test_without_input_the_detector_is_a_noop(cfg: NodeConfig) -> None:
    text = rendered(cfg)
    assert "-s 10.0.0.0/8" not in text
    assert not [r for r in text.splitlines() if r.startswith("-A KUBE-SVC-") and "KUBE-MARK-MASQ" in r]
    assert "pod traffic for" not in text
    # the rest is unchanged: Cluster-policy external traffic is still masqueraded
    assert '"masquerade traffic for ns5/svc5:p80 external destinations" -j KUBE-MARK-MASQ' in text


def test_masquerade_all_wins_over_any_detector() -> None:
    cfg = dataclasses.replace(DETECTORS["BridgeInterface"][0], masquerade_all=True)
    svc_rules = [r for r in rendered(cfg).splitlines() if r.startswith("-A KUBE-SVC-") and "MARK-MASQ" in r]
    assert len(svc_rules) == 5 and not any("-i cbr0" in r for r in svc_rules)


def test_ipv6_uses_the_first_cidr_of_its_family() -> None:
    cfg = NodeConfig(hostname="test-node", ip_family=6, node_ips=("fd00::2",), detect_local_mode="NodeCIDR",
                     node_pod_cidrs=("10.0.1.0/24", "fd00:10:1::/64", "fd00:10:2::/64"))
    text = format_ruleset(build_ruleset(state_from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns1}\nspec:\n  clusterIP: fd00:30::1\n"
        "  ipFamilies: [IPv6]\n  ports: [{name: p, port: 80, protocol: TCP}]\n---\n"
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-1, namespace: ns1, labels: "
        "{kubernetes.io/service-name: s}}\naddressType: IPv6\nports: [{name: p, port: 80, protocol: TCP}]\n"
        "endpoints: [{addresses: ['fd00:10:2::5']}]\n", cfg), cfg, BlockCache()), cfg)
    assert "! -s fd00:10:1::/64 -j KUBE-MARK-MASQ" in text
