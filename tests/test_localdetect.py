"""The local-traffic detector as kube-proxy's getLocalDetectors builds it, per mode and family."""

from __future__ import annotations

from dataclasses import replace

import pytest

from svcproxy.config import NodeConfig
from svcproxy.localdetect import LocalDetector, local_detector, missing_input

NODE = NodeConfig(hostname="test-node", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/8",))


@pytest.mark.parametrize(("cfg", "family", "expected"), [
    (NODE, 4, LocalDetector("cidr", "10.0.0.0/8")),
    (NODE, 6, LocalDetector()),
    (replace(NODE, cluster_cidrs=("fd00:10::/64", "10.1.0.0/16", "10.2.0.0/16")), 4, LocalDetector("cidr", "10.1.0.0/16")),
    (replace(NODE, cluster_cidrs=("fd00:10::/64", "10.1.0.0/16")), 6, LocalDetector("cidr", "fd00:10::/64")),
    (replace(NODE, detect_local_mode="NodeCIDR"), 4, LocalDetector()),
    (replace(NODE, detect_local_mode="NodeCIDR", node_pod_cidrs=("10.0.1.0/24", "fd00:1::/64")), 6,
     LocalDetector("cidr", "fd00:1::/64")),
    (replace(NODE, detect_local_mode="BridgeInterface", bridge_interface="cbr0"), 6, LocalDetector("interface", "cbr0")),
    (replace(NODE, detect_local_mode="InterfaceNamePrefix", interface_name_prefix="cali"), 4,
     LocalDetector("interface-prefix", "cali")),
])
def test_detector_per_mode_and_family(cfg: NodeConfig, family: int, expected: LocalDetector) -> None:
    assert local_detector(cfg, family) == expected


def test_matches_are_written_as_kube_proxy_writes_them() -> None:
    cidr, br, pfx = LocalDetector("cidr", "fd00::/48"), LocalDetector("interface", "br0"), \
        LocalDetector("interface-prefix", "veth")
    assert (cidr.iptables(), cidr.iptables(True), cidr.nft(), cidr.nft(True)) == (
        "-s fd00::/48", "! -s fd00::/48", "ip6 saddr fd00::/48", "ip6 saddr != fd00::/48")
    assert (br.iptables(), br.iptables(True), br.nft(), br.nft(True)) == (
        "-i br0", "! -i br0", 'iifname "br0"', 'iifname != "br0"')
    assert (pfx.iptables(), pfx.iptables(True), pfx.nft(), pfx.nft(True)) == (
        "-i veth+", "! -i veth+", 'iifname "veth*"', 'iifname != "veth*"')
    assert not LocalDetector().implemented and LocalDetector().iptables() == LocalDetector().nft(True) == ""


def test_is_local() -> None:
    assert LocalDetector("cidr", "10.0.0.0/8").is_local("10.1.2.3", None) is True
    assert LocalDetector("interface-prefix", "veth").is_local("1.2.3.4", "veth12") is True
    assert LocalDetector("interface", "br0").is_local("1.2.3.4", "br01") is False
    assert LocalDetector("interface", "br0").is_local("1.2.3.4", None) is None
    assert LocalDetector().is_local("10.1.2.3", "br0") is False


def test_interface_modes_need_their_name_and_missing_input_is_explained() -> None:
    with pytest.raises(ValueError, match="BridgeInterface.*must not be empty"):
        replace(NODE, detect_local_mode="BridgeInterface")
    with pytest.raises(ValueError, match="InterfaceNamePrefix.*must not be empty"):
        replace(NODE, detect_local_mode="InterfaceNamePrefix")
    assert missing_input(NODE) == ""
    assert "no cluster CIDR specified for primary IP family (IPv4)" in missing_input(replace(NODE, cluster_cidrs=()))
    assert "no PodCIDR defined at node" in missing_input(replace(NODE, detect_local_mode="NodeCIDR"))
