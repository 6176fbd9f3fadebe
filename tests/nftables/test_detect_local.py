"""Each of kube-proxy's local-traffic detectors in nftables mode, both table layouts, on
kube-proxy's fixture (pods 10.0.0.0/8, ClusterIPs 172.30.0.0/16, node 192.168.0.2, test-node):
IfNotLocalNFT guards the ClusterIP masquerade, IfLocalNFT short-circuits pod traffic to an
externalTrafficPolicy=Local service's external addresses; the same text goes through the fake
kernel and the netlink encoder."""

from __future__ import annotations

from dataclasses import replace

import pytest

from svcproxy.config import NodeConfig
from svcproxy.dataplane.nftables import NftablesDataplane, netlink
from svcproxy.dataplane.nftables.commands import AddRule
from svcproxy.dataplane.nftables.fake import FakeKernel
from svcproxy.dataplane.nftables.render import render_ruleset

from .helpers import service, state_of

NODE = NodeConfig(hostname="test-node", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/8",))
DETECTORS = {
    # mode config -> (IfLocalNFT, IfNotLocalNFT)
    "ClusterCIDR": (NODE, "ip saddr 10.0.0.0/8", "ip saddr != 10.0.0.0/8"),
    "NodeCIDR": (replace(NODE, detect_local_mode="NodeCIDR", node_pod_cidrs=("fd00:10:1::/64", "10.0.1.0/24")),
                 "ip saddr 10.0.1.0/24", "ip saddr != 10.0.1.0/24"),
    "BridgeInterface": (replace(NODE, detect_local_mode="BridgeInterface", bridge_interface="cbr0"),
                        'iifname "cbr0"', 'iifname != "cbr0"'),
    "InterfaceNamePrefix": (replace(NODE, detect_local_mode="InterfaceNamePrefix", interface_name_prefix="veth"),
                            'iifname "veth*"', 'iifname != "veth*"'),
}
LAYOUTS = ("kube-proxy", "maps")


def overall() -> object:
    """A plain ClusterIP service and a LoadBalancer with externalTrafficPolicy Local."""
    return state_of(
        service("svc1", "172.30.0.41", ["10.180.0.1"]),
        service("svc2", "172.30.0.42", ["10.180.0.2"], local=("10.180.0.2",), node_port=3001,
                load_balancer_ips=("1.2.3.4",), external_ips=("192.168.99.22",), external_policy_local=True))


def lines_with(text: str, what: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if what in line]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(DETECTORS))
def test_each_detector_writes_its_match_where_kube_proxy_does(name: str, layout: str) -> None:
    cfg, if_local, if_not_local = DETECTORS[name]
    text = render_ruleset(overall(), replace(cfg, nftables_layout=layout))
    ask = "jump mark-for-masquerade" if layout == "maps" else "mark set mark or 0x4000"  # 1.36 marks inline
    masq = lines_with(text, f"{if_not_local} {ask}")
    # the ClusterIP masquerade only (per service port, or kube-proxy 1.36's one rule on @cluster-ips)
    assert masq and all("172.30.0.4" in r or "@cluster-ips" in r for r in masq), masq
    short = lines_with(text, f'{if_local} goto service-')
    assert len(short) == 1 and short[0].endswith('comment "short-circuit pod traffic"')
    # no other detector's match sneaks in
    others = {m for n, (_, a, b) in DETECTORS.items() if n != name and a != if_local for m in (a, b)}
    assert not [o for o in others if o in text]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", [replace(NODE, cluster_cidrs=()), replace(NODE, detect_local_mode="NodeCIDR")],
                         ids=["no-cluster-cidr", "no-pod-cidr"])
def test_without_input_the_detector_is_a_noop(cfg: NodeConfig, layout: str) -> None:
    text = render_ruleset(overall(), replace(cfg, nftables_layout=layout))
    assert not lines_with(text, "saddr != 10.")
    assert not lines_with(text, "short-circuit pod traffic")
    assert lines_with(text, 'comment "short-circuit local traffic"')  # the node's own traffic still is


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(DETECTORS))
def test_the_fake_kernel_takes_each_detector(name: str, layout: str) -> None:
    cfg = replace(DETECTORS[name][0], nftables_layout=layout)
    dp = NftablesDataplane(cfg, io=FakeKernel(cfg))
    dp.sync(overall())
    dp.sync(overall(), ["ns1/svc2"])


@pytest.mark.parametrize(("rule", "meta", "value"), [
    ('iifname "cbr0" goto service-x', "iifname", b"cbr0".ljust(16, b"\0")),
    ('iifname != "veth*" jump mark-for-masquerade', "iifname", b"veth"),
])
def test_netlink_encodes_interface_matches_as_nft_does(rule: str, meta: str, value: bytes) -> None:
    (msg,) = netlink.encode("ip", "kube-proxy", [AddRule("c", rule)])
    assert msg[0] == netlink.NEWRULE
    assert value in msg[2] and b"meta" in msg[2]
