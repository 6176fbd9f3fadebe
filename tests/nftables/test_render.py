"""nftables rendering, checked on the text: layout and names as kube-proxy's nftables mode."""

from __future__ import annotations

import re
from dataclasses import replace

from svcproxy.config import NodeConfig
from svcproxy.dataplane import renderer
from svcproxy.dataplane.nftables import names
from svcproxy.dataplane.nftables.render import render_ruleset
from svcproxy.state import ServicePortName

from .helpers import CFG, service, state_from, state_of


def chain(text: str, name: str) -> list[str]:
    """The rules of one chain in the rendered text ([] if absent)."""
    m = re.search(rf"\n\tchain {re.escape(name)} {{\n(.*?)\n\t}}", text, re.S)
    return [line.strip() for line in m.group(1).splitlines()] if m else []


def elements(text: str, container: str) -> list[str]:
    m = re.search(rf"\n\t(?:set|map) {re.escape(container)} {{\n(?:(?!\n\t}}).)*?elements = {{ (.*?) }}\n",
                  text, re.S)
    return [e.strip() for e in m.group(1).split(",\n")] if m else []


def test_names_hash_like_kube_proxy() -> None:
    spn = ServicePortName("ns1", "svc1", "p80", "TCP")
    assert names.port_base(spn) == "ULMVA6XW-ns1/svc1/tcp/p80"
    assert names.endpoint_base(spn, "10.180.0.1", 80) == "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    assert names.endpoint_base(spn, "fd00::1", 80).endswith("__fd00..1/80")


def test_renderer_is_registered_and_deterministic() -> None:
    st = state_of(service("a", "172.30.0.1", ["10.0.1.1", "10.0.1.2"]), service("b", "172.30.0.2", []))
    text = renderer("nftables")(st, CFG)
    assert text.startswith("table ip kube-proxy {\n")
    again = render_ruleset(state_of(*reversed(list(st.services.values()))), CFG)
    assert text == again


def test_cluster_ip_dispatch_numgen_and_masquerade() -> None:
    text = render_ruleset(state_of(service("a", "172.30.0.1", ["10.0.1.1", "10.0.1.2"])), CFG)
    svc = "service-" + names.port_base(ServicePortName("ns1", "a", "p", "TCP"))
    assert f"172.30.0.1 . tcp . 80 : goto {svc}" in elements(text, "service-ips")
    assert elements(text, "cluster-ips") == ["172.30.0.1"]
    # kube-proxy 1.36 (writeServiceToEndpointDNATs): one DNAT through a numgen map, no endpoint chains
    assert chain(text, svc) == ["meta l4proto tcp dnat ip addr . port to numgen random mod 2 "
                                "map { 0 : 10.0.1.1 . 8080, 1 : 10.0.1.2 . 8080 }"]
    assert "chain endpoint-" not in text and "set affinity-" not in text
    # ClusterIP traffic from outside the pod network is masqueraded in "services", for all ClusterIPs
    assert chain(text, "services")[0] == ('ip daddr @cluster-ips ip saddr != 10.0.0.0/16 mark set mark or 0x4000 '
                                          'comment "masquerade clusterIP traffic from outside cluster"')
    assert chain(text, "masquerading") == [
        "mark and 0x4000 != 0 mark set mark xor 0x4000 masquerade fully-random",
        "ct status dnat ip saddr . ip daddr . meta l4proto . th dport @hairpin-connections masquerade fully-random"]
    assert "mark-for-masquerade" not in text


def test_masquerade_all_and_no_cluster_cidr() -> None:
    st = state_of(service("a", "172.30.0.1", ["10.0.1.1"]))
    svc = "service-" + names.port_base(ServicePortName("ns1", "a", "p", "TCP"))
    text = render_ruleset(st, replace(CFG, masquerade_all=True))
    assert chain(text, "services")[0] == (
        'ip daddr @cluster-ips mark set mark or 0x4000 comment "masquerade all clusterIP traffic"')
    assert chain(text, svc) == ["meta l4proto tcp dnat ip addr . port to numgen random mod 1 map { 0 : 10.0.1.1 . 8080 }"]
    text = render_ruleset(st, replace(CFG, cluster_cidrs=()))
    assert chain(text, "services")[0].startswith("ip daddr . meta l4proto")  # no local detector: no masquerade


def test_no_endpoints_rejects() -> None:
    text = render_ruleset(state_of(service("a", "172.30.0.1", [], node_port=30001,
                                           external_ips=("192.168.100.1",))), CFG)
    assert elements(text, "no-endpoint-services") == [
        '172.30.0.1 . tcp . 80 comment "ns1/a:p" : goto reject-chain',
        '192.168.100.1 . tcp . 80 comment "ns1/a:p" : goto reject-chain']
    assert elements(text, "no-endpoint-nodeports") == ['tcp . 30001 comment "ns1/a:p" : goto reject-chain']
    assert elements(text, "service-ips") == []
    assert "/a/" not in text.split("chain services {")[1]  # no per-service chains at all


def test_external_traffic_policy_local() -> None:
    kw = dict(node_port=30001, load_balancer_ips=("192.168.100.2",), external_policy_local=True)
    base = names.port_base(ServicePortName("ns1", "a", "p", "TCP"))
    # no local endpoint: external traffic dropped, pod and node traffic short-circuited to the cluster chain
    text = render_ruleset(state_of(service("a", "172.30.0.1", ["10.0.2.1"], **kw)), CFG)
    assert 'tcp . 30001 comment "ns1/a:p" : drop' in elements(text, "no-endpoint-nodeports")
    assert '192.168.100.2 . tcp . 80 comment "ns1/a:p" : drop' in elements(text, "no-endpoint-services")
    assert chain(text, "external-" + base) == [
        f'ip saddr 10.0.0.0/16 goto service-{base} comment "short-circuit pod traffic"',
        'fib saddr type local mark set mark or 0x4000 comment "masquerade local traffic"',
        f'fib saddr type local goto service-{base} comment "short-circuit local traffic"']
    # a local endpoint: external traffic goes to the local chain, which only has it
    text = render_ruleset(state_of(service("a", "172.30.0.1", ["10.0.1.1", "10.0.2.1"], local=("10.0.1.1",),
                                           **kw)), CFG)
    assert chain(text, "external-" + base)[-1] == f"goto local-{base}"
    assert chain(text, "local-" + base) == [
        "meta l4proto tcp dnat ip addr . port to numgen random mod 1 map { 0 : 10.0.1.1 . 8080 }"]
    assert "mod 2 map { 0 : 10.0.1.1 . 8080, 1 : 10.0.2.1 . 8080 }" in chain(text, "service-" + base)[-1]
    # Cluster policy: the external chain asks for masquerade inline, then goes to the service chain
    text = render_ruleset(state_of(service("a", "172.30.0.1", ["10.0.2.1"], node_port=30001)), CFG)
    assert chain(text, "external-" + base) == ['mark set mark or 0x4000 comment "masquerade"', f"goto service-{base}"]
    assert elements(text, "no-endpoint-nodeports") == []


def test_internal_traffic_policy_local_without_local_endpoints_drops() -> None:
    text = render_ruleset(state_of(service("a", "172.30.0.1", ["10.0.2.1"], internal_policy_local=True)), CFG)
    assert elements(text, "no-endpoint-services") == ['172.30.0.1 . tcp . 80 comment "ns1/a:p" : drop']
    assert elements(text, "service-ips") == []


def test_nodeports_on_all_addresses_or_selected_ones() -> None:
    st = state_of(service("a", "172.30.0.1", ["10.0.1.1"], node_port=30001))
    text = render_ruleset(st, CFG)
    assert ("fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
            in chain(text, "services"))
    assert "set nodeport-ips" not in text
    cfg = replace(CFG, nodeport_addresses=("192.168.0.0/24", "127.0.0.0/8"), local_addresses=("192.168.0.9",))
    text = render_ruleset(st, cfg)
    assert elements(text, "nodeport-ips") == ["192.168.0.2", "192.168.0.9"]  # never loopback
    assert "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports" in chain(text, "services")
    assert chain(text, "nodeport-endpoints-check") == [
        "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"]


def test_load_balancer_source_ranges_firewall() -> None:
    st = state_of(service("a", "172.30.0.1", ["10.0.1.1"], load_balancer_ips=("192.168.100.3",),
                          load_balancer_source_ranges=("203.0.113.0/25", "192.168.0.0/24")))
    base = names.port_base(ServicePortName("ns1", "a", "p", "TCP"))
    text = render_ruleset(st, CFG)
    assert elements(text, "firewall-ips") == [f"192.168.100.3 . tcp . 80 : goto firewall-{base}"]
    # the node's own address is in a range: the LB IP may be the source too (hairpin from the node)
    assert chain(text, "firewall-" + base) == ["ip saddr != { 203.0.113.0/25, 192.168.0.0/24, 192.168.100.3 } drop"]
    assert f"192.168.100.3 . tcp . 80 : goto external-{base}" in elements(text, "service-ips")
    assert chain(text, "firewall-check") == ["ip daddr . meta l4proto . th dport vmap @firewall-ips"]


def test_session_affinity_timed_set_per_endpoint() -> None:
    st = state_of(service("a", "172.30.0.1", ["10.0.1.1", "10.0.1.2"], session_affinity_timeout=300))
    base = names.port_base(ServicePortName("ns1", "a", "p", "TCP"))
    text = render_ruleset(st, CFG)
    ep = names.endpoint_base(ServicePortName("ns1", "a", "p", "TCP"), "10.0.1.1", 8080)
    assert f"\tset affinity-{ep} {{\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 300s\n" in text
    ep2 = names.endpoint_base(ServicePortName("ns1", "a", "p", "TCP"), "10.0.1.2", 8080)
    # kube-proxy 1.36 (writeServiceToEndpointJumps): per-endpoint chains only with ClientIP affinity
    assert chain(text, "service-" + base) == [
        f"ip saddr @affinity-{ep} goto endpoint-{ep}",
        f"ip saddr @affinity-{ep2} goto endpoint-{ep2}",
        f"numgen random mod 2 vmap {{ 0 : goto endpoint-{ep}, 1 : goto endpoint-{ep2} }}"]
    assert chain(text, "endpoint-" + ep) == [f"update @affinity-{ep} {{ ip saddr }}",
                                             "meta l4proto tcp dnat to 10.0.1.1:8080"]  # no hairpin rule


def test_ipv6_udp_sctp() -> None:
    cfg = NodeConfig(hostname="test-node", ip_family=6, node_ips=("fd00::2",), cluster_cidrs=("fd00:10::/64",))
    st = state_of(service("a", "fd00:30::1", ["fd00:10::5"], protocol="UDP", port=53),
                  service("b", "fd00:30::2", ["fd00:10::6"], protocol="SCTP", port=9))
    text = render_ruleset(st, cfg)
    assert text.startswith("table ip6 kube-proxy {")
    assert "type ipv6_addr . inet_proto . inet_service : verdict" in text
    a = names.port_base(ServicePortName("ns1", "a", "p", "UDP"))
    assert chain(text, "services")[0] == ('ip6 daddr @cluster-ips ip6 saddr != fd00:10::/64 mark set mark or 0x4000 '
                                          'comment "masquerade clusterIP traffic from outside cluster"')
    assert chain(text, "service-" + a) == [
        "meta l4proto udp dnat ip6 addr . port to numgen random mod 1 map { 0 : fd00:10::5 . 8080 }"]
    assert "meta l4proto sctp dnat ip6 addr . port to numgen random mod 1 map { 0 : fd00:10::6 . 8080 }" in text
    assert "type ipv6_addr . ipv6_addr . inet_proto . inet_service" in text  # hairpin-connections
    assert "fd00:30::2 . sctp . 9 : goto service-" in text
    assert "ip6 daddr != ::1 meta l4proto . th dport vmap @service-nodeports" in text


def test_example_cluster_renders(tmp_path) -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "examples" / "cluster"
    text = "\n---\n".join(p.read_text() for p in sorted(root.glob("*.yaml")))
    st = state_from(text)
    out = render_ruleset(st, CFG)
    # the terminating endpoint of web gets no new connections; three ready ones do
    web = names.port_base(ServicePortName("default", "web", "http", "TCP"))
    assert "numgen random mod 3 map {" in chain(out, "service-" + web)[-1]
    assert "10.0.2.11" not in out


def test_hairpin_connections_hold_the_local_endpoints() -> None:
    """kube-proxy 1.36: a pod reaching itself through its service is masqueraded through
    @hairpin-connections (endpoint . endpoint . protocol . port), local endpoints only, one
    element however many services share the endpoint."""
    st = state_of(service("a", "172.30.0.1", ["10.0.1.1", "10.0.2.1"], local=("10.0.1.1",)),
                  service("b", "172.30.0.2", ["10.0.1.1"], local=("10.0.1.1",), protocol="UDP"),
                  service("c", "172.30.0.3", ["10.0.1.1"], local=("10.0.1.1",)))
    text = render_ruleset(st, CFG)
    assert elements(text, "hairpin-connections") == ["10.0.1.1 . 10.0.1.1 . tcp . 8080",
                                                     "10.0.1.1 . 10.0.1.1 . udp . 8080"]
    assert text.index("set hairpin-connections {") < text.index("set cluster-ips {")  # declared first, as 1.36
    assert ('\tset hairpin-connections {\n\t\ttype ipv4_addr . ipv4_addr . inet_proto . inet_service\n'
            '\t\tcomment "service hairpin connections"\n') in text
    assert "ip saddr 10.0.1.1" not in text  # no per-endpoint hairpin rule


def test_maps_layout_keeps_its_own_masquerade() -> None:
    """The maps layout is not kube-proxy's: it keeps mark-for-masquerade and its hairpin pairs."""
    text = render_ruleset(state_of(service("a", "172.30.0.1", ["10.0.1.1"], local=("10.0.1.1",))),
                          replace(CFG, nftables_layout="maps"))
    assert "hairpin-connections" not in text and "chain mark-for-masquerade {" in text
    assert chain(text, "masquerading")[-1] == "masquerade fully-random"
