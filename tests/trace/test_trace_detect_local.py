"""The tracer on the interface detect-local modes: `-i cbr0` / `! -i veth+` and `iifname "cbr0"` /
`iifname != "veth*"`, with the packet's input interface given (--in-interface), on rulesets
rendered for kube-proxy's fixture (pods 10.0.0.0/8, ClusterIPs 172.30.0.0/16, node 192.168.0.2)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner
from trace_helpers import NODE, ipt, summary

from svcproxy.cli import main
from svcproxy.config import NodeConfig
from svcproxy.dataplane import renderer
from svcproxy.netfilter import trace_packet
from svcproxy.state import EndpointInfo, ProxyState, ServicePortInfo, ServicePortName, ServiceState

BASE = NodeConfig(hostname="test-node", node_ips=(NODE,), cluster_cidrs=("10.0.0.0/8",))
BRIDGE = replace(BASE, detect_local_mode="BridgeInterface", bridge_interface="cbr0")
PREFIX = replace(BASE, detect_local_mode="InterfaceNamePrefix", interface_name_prefix="veth")
RENDERINGS = [("iptables", "kube-proxy"), ("nftables", "kube-proxy"), ("nftables", "maps")]


def _service(name: str, cluster_ip: str, ep: str, **kw: object) -> ServiceState:
    spn = ServicePortName("ns1", name, "p80", "TCP")
    info = ServicePortInfo(spn, cluster_ip, 80, "TCP", 80, **kw)  # type: ignore[arg-type]
    return ServiceState(spn.service_key, (info,), {spn: (EndpointInfo(ep, 80, node_name="other"),)})


def state() -> ProxyState:
    """svc1: a ClusterIP; svc2: a NodePort with externalTrafficPolicy Local and no local endpoint."""
    st = ProxyState()
    for s in (_service("svc1", "172.30.0.41", "10.180.0.1"),
              _service("svc2", "172.30.0.42", "10.180.0.2", node_port=3001, external_policy_local=True)):
        st.services[s.key] = s
    return st


def rules(mode: str, layout: str, cfg: NodeConfig) -> str:
    return renderer(mode)(state(), replace(cfg, nftables_layout=layout))


@pytest.mark.parametrize(("mode", "layout"), RENDERINGS)
@pytest.mark.parametrize(("cfg", "pod_if", "other_if"), [(BRIDGE, "cbr0", "cbr01"), (PREFIX, "veth9a1f", "eth0")],
                         ids=["bridge", "prefix"])
def test_pod_traffic_is_told_by_its_input_interface(mode: str, layout: str, cfg: NodeConfig, pod_if: str,
                                                    other_if: str) -> None:
    text = rules(mode, layout, cfg)
    # pod -> ClusterIP: not masqueraded; the same source on another interface: masqueraded
    pod = trace_packet(text, "10.0.1.5", "172.30.0.41", 80, local_addresses=[NODE], in_interface=pod_if)
    assert summary(pod) == {("ACCEPT", "10.180.0.1:80", False): 1.0} and pod.warnings == []
    other = trace_packet(text, "10.0.1.5", "172.30.0.41", 80, local_addresses=[NODE], in_interface=other_if)
    assert summary(other) == {("ACCEPT", "10.180.0.1:80", True): 1.0} and other.warnings == []
    # eTP=Local NodePort without a local endpoint: pod traffic is short-circuited to the
    # cluster-wide endpoints, traffic from elsewhere is dropped
    short = trace_packet(text, "10.0.1.5", NODE, 3001, local_addresses=[NODE], in_interface=pod_if)
    assert summary(short) == {("ACCEPT", "10.180.0.2:80", False): 1.0}
    dropped = trace_packet(text, "10.0.1.5", NODE, 3001, local_addresses=[NODE], in_interface=other_if)
    assert [o.verdict for o in dropped.outcomes] == ["DROP"]
    # the node's own packets have no input interface: `! -i X` / iifname != X match, no warning
    node = trace_packet(text, NODE, "172.30.0.41", 80, local_addresses=[NODE])
    assert summary(node) == {("ACCEPT", "10.180.0.1:80", True): 1.0} and node.warnings == []
    # an unknown interface is reported, and assumed to be none of the named ones
    unknown = trace_packet(text, "10.0.1.5", "172.30.0.41", 80, local_addresses=[NODE])
    assert any("interface unknown" in w for w in unknown.warnings)
    assert summary(unknown) == {("ACCEPT", "10.180.0.1:80", True): 1.0}


@pytest.mark.parametrize(("ruleset", "iface", "masq"), [
    (ipt(nat="-A PREROUTING ! -i veth+ -j MASQ-ME"), "veth0", False),
    (ipt(nat="-A PREROUTING ! -i veth+ -j MASQ-ME"), "eth0", True),
    (ipt(nat="-A PREROUTING -i cbr0 -j RETURN\n-A PREROUTING -j MASQ-ME"), "cbr0", False),
    ("table ip t {\n\tchain pre {\n\t\ttype nat hook prerouting priority dstnat;\n"
     "\t\tiifname != veth* jump masq\n\t}\n\tchain masq {\n\t\tmeta mark set 0x4000\n\t}\n}\n", "veth0", False),
    ("table ip t {\n\tchain pre {\n\t\ttype nat hook prerouting priority dstnat;\n"
     "\t\tiifname != veth* jump masq\n\t}\n\tchain masq {\n\t\tmeta mark set 0x4000\n\t}\n}\n", "eth0", True),
], ids=["ipt-prefix-pod", "ipt-prefix-other", "ipt-exact", "nft-unquoted-pod", "nft-unquoted-other"])
def test_hand_written_interface_matches(ruleset: str, iface: str, masq: bool) -> None:
    r = trace_packet(ruleset.replace("-j MASQ-ME", "-j MARK --set-xmark 0x4000/0x4000"), "10.0.1.5", "10.9.9.9",
                     80, local_addresses=[NODE], in_interface=iface)
    assert r.warnings == []
    assert any("0x4000" in step for step in r.to_dict()["path"]) == masq


def test_cli_in_interface(tmp_path) -> None:
    f = tmp_path / "rules"
    f.write_text(rules("iptables", "kube-proxy", BRIDGE))
    args = ["trace", "--rules", str(f), "--local-address", NODE, "--source", "10.0.1.5",
            "--destination", "172.30.0.41", "--port", "80", "--output", "json"]
    for iface, masq in (("cbr0", False), ("eth0", True)):
        r = CliRunner().invoke(main, [*args, "--in-interface", iface])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["masquerade"] is masq
