"""The lab's plan (pure): nodes, pods and names from manifests, and its clear errors. No root needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from svcproxy.lab import LabError, make_plan
from svcproxy.lab.checks import preflight
from svcproxy.lab.plan import Names, manifest_text
from svcproxy.lab.targets import resolve
from svcproxy.model.load import load_text

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "cluster"

SLICE = """
apiVersion: v1
kind: Service
metadata: {{name: s, namespace: default}}
spec:
  clusterIP: 172.30.0.99
  ports: [{{name: p, protocol: TCP, port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: s-1, namespace: default, labels: {{kubernetes.io/service-name: s}}}}
addressType: IPv4
ports: [{{name: p, protocol: TCP, port: 8080}}]
endpoints:
- addresses: [{ip}]
  nodeName: {node}
"""


def test_examples_plan_nodes_and_pods():
    plan = make_plan([EXAMPLES])
    assert [(n.name, n.ip, n.pod_cidr, n.gateway) for n in plan.nodes] == [
        ("test-node", "192.168.0.2", "10.0.1.0/24", "10.0.1.1"),
        ("test-node-2", "192.168.0.3", "10.0.2.0/24", "10.0.2.1")]
    pods = {p.ip: p for p in plan.pods}
    assert len(pods) == 10  # every endpoint address, the terminating one included
    assert pods["10.0.2.11"].node == "test-node-2" and pods["10.0.2.11"].name == "web-2-11"
    assert pods["10.0.1.20"].tcp_ports == (5353,) and pods["10.0.1.20"].udp_ports == (5353,)


def test_node_count_extends_and_cuts():
    assert [n.name for n in make_plan([EXAMPLES / "nodes.yaml"], 3).nodes] == [
        "test-node", "test-node-2", "test-node-3"]
    assert make_plan([EXAMPLES / "nodes.yaml"], 3).nodes[2].pod_cidr == "10.0.3.0/24"
    with pytest.raises(LabError, match="not in this lab"):
        make_plan([EXAMPLES], 1)  # test-node-2's pods have no node


def test_endpoint_outside_its_node_pod_cidr_is_named(tmp_path):
    (tmp_path / "s.yaml").write_text(SLICE.format(ip="10.0.2.5", node="test-node"))
    with pytest.raises(LabError, match=r"EndpointSlice default/s-1: endpoints\[0\].addresses: 10.0.2.5 is not "
                                       r"in node test-node's pod CIDR 10.0.1.0/24"):
        make_plan([tmp_path])


def test_endpoint_on_unknown_node_is_named(tmp_path):
    (tmp_path / "s.yaml").write_text(SLICE.format(ip="10.0.1.5", node="nowhere"))
    with pytest.raises(LabError, match=r"endpoints\[0\].nodeName: node nowhere is not in this lab"):
        make_plan([tmp_path])


def test_missing_manifest_path():
    with pytest.raises(LabError, match="no such file"):
        make_plan(["/nonexistent/manifests"])


def test_names_fit_the_kernel_limit():
    plan = make_plan([EXAMPLES])
    names = Names("abcdef")
    node = plan.nodes[0]
    ifaces = [names.lan_bridge, names.uplink, names.lan_port(node), names.lan_port(None), names.pod_bridge,
              names.pod_eth, names.pod_port(plan.pods[0], node)]
    assert all(len(i) <= 15 and i.startswith("abcdef-") for i in ifaces), ifaces
    for bad in ("", "toolong7", "9abc", "Abc", "a-b"):
        with pytest.raises(LabError, match="prefix"):
            Names(bad)


def test_manifest_text_replaces_nodes_and_keeps_everything_else():
    plan = make_plan([EXAMPLES], 3)
    objects = load_text(manifest_text([EXAMPLES], plan.nodes))
    assert not objects.errors
    assert [n.name for n in objects.nodes] == ["test-node", "test-node-2", "test-node-3"]
    assert {s.key for s in objects.services} == {s.key for s in make_plan([EXAMPLES]).services}


def test_targets_from_inside_and_outside():
    plan = make_plan([EXAMPLES])
    svcs, nodes = plan.services, list(plan.nodes)
    assert resolve(svcs, "web", outside=False, nodes=nodes).ip == "172.30.0.10"
    t = resolve(svcs, "web:http", outside=True, nodes=nodes, node="test-node-2")
    assert (t.kind, t.ip, t.port) == ("nodeport", "192.168.0.3", 30080)
    assert resolve(svcs, "local-web", outside=True, nodes=nodes).ip == "192.168.100.20"
    assert resolve(svcs, "sticky", outside=True, nodes=nodes).ip == "192.168.100.30"
    assert resolve(svcs, "kube-system/dns", outside=False, nodes=nodes, udp=True).protocol == "UDP"
    with pytest.raises(LabError, match="no service 'nope'"):
        resolve(svcs, "nope", outside=False, nodes=nodes)
    with pytest.raises(LabError, match="no TCP port '81'"):
        resolve(svcs, "web:81", outside=False, nodes=nodes)
    with pytest.raises(LabError, match="has no NodePort"):
        resolve(svcs, "empty", outside=True, nodes=nodes)


def test_preflight_says_what_to_do():
    found = {"ip": "/x", "sysctl": "/x", "iptables-restore": "/x", "iptables-save": "/x", "nft": "/x"}
    with pytest.raises(LabError, match="needs root: run as root"):
        preflight("iptables", euid=1000, which=found.get)
    with pytest.raises(LabError, match="apt-get install nftables"):
        preflight("nftables", euid=0, which={**found, "nft": None}.get)
    with pytest.raises(LabError, match="apt-get install iptables"):
        preflight("iptables", euid=0, which={**found, "iptables-restore": None}.get)
    with pytest.raises(LabError, match="no network namespace support"):
        preflight("iptables", euid=0, which=found.get, netns_path=Path("/nonexistent"))
    preflight("nftables", euid=0, which=found.get)  # all there: no error


def test_wiring_routes_pods_between_nodes_and_outside_through_a_node():
    from svcproxy.lab import wiring

    plan = make_plan([EXAMPLES])
    names = Names("svl")
    n1, n2 = plan.nodes
    assert "route add 10.0.2.0/24 via 192.168.0.3" in wiring.node(names, n1, plan.nodes)
    assert "route add 10.0.1.0/24 via 192.168.0.2" in wiring.node(names, n2, plan.nodes)
    assert "addr add 10.0.1.1/24 dev svl-cbr" in wiring.node(names, n1, plan.nodes)
    assert "route add 192.168.100.0/24 via 192.168.0.2" in wiring.outside(names, n1)
    web = next(p for p in plan.pods if p.ip == "10.0.1.10")
    assert "link set dev svl-v10 type bridge_slave hairpin on" in wiring.pod_ports(names, n1, [web])
    assert wiring.pod(names, n1, web)[-1] == "route add default via 10.0.1.1"
    lan = wiring.lan(names, plan.nodes)
    assert "link add svl-n2 type veth peer name svl-up netns svl-n2" in lan
    assert "link add svl-o type veth peer name svl-up netns svl-out" in lan
    argv = wiring.server_argv(next(p for p in plan.pods if p.ip == "10.0.1.20"), Path("/r"))
    assert argv[-4:] == ["--tcp", "5353", "--udp", "5353"]


def test_programmed_check_ignores_chain_declarations():
    from svcproxy.lab.proxies import mentions, rule_lines

    nft = ("table ip kube-proxy {\n\tchain endpoint-3E3UL3FZ-default/web/tcp/http__10.0.1.11/8080 {\n\t}\n"
           "\tchain endpoint-X-default/web/tcp/http__10.0.1.10/8080 {\n\t\tip saddr 10.0.1.10 jump mark\n"
           "\t\tmeta l4proto tcp dnat to 10.0.1.10:8080\n\t}\n}\n")
    assert not mentions(rule_lines(nft), "10.0.1.11")  # a stale, empty chain does not count
    assert mentions(rule_lines(nft), "10.0.1.10")
    assert not mentions(rule_lines(nft), "10.0.1.1")  # whole addresses only
    ipt = ":KUBE-SEP-A - [0:0]\n-A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination 10.0.2.10:8080\n"
    assert mentions(rule_lines(ipt), "10.0.2.10") and not mentions(rule_lines(":KUBE-SEP-10.0.2.10"), "10.0.2.10")
