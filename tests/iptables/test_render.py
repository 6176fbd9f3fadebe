"""Rendered iptables-restore text: each feature, and kube-proxy's own test expectations."""

from __future__ import annotations

import dataclasses
import re
import textwrap

from click.testing import CliRunner

from svcproxy.cli import main
from svcproxy.config import NodeConfig
from svcproxy.dataplane.iptables.blocks import probability
from svcproxy.dataplane.iptables.names import endpoint_chain, port_proto_hash, service_chains
from svcproxy.dataplane.iptables.render import BlockCache, build_ruleset, format_ruleset, render_ruleset

from .conftest import NODE, state_from


def svc(name: str, spec: str, status: str = "", ns: str = "ns1") -> str:
    out = f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n"
    out += textwrap.indent(textwrap.dedent(spec).strip(), "  ") + "\n"
    if status:
        out += "status:\n" + textwrap.indent(textwrap.dedent(status).strip(), "  ") + "\n"
    return out + "---\n"


def eps(svc_name: str, endpoints: str, ns: str = "ns1", port: str = "{name: p80, port: 80, protocol: TCP}",
        family: str = "IPv4") -> str:
    return (f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {svc_name}-1, namespace: {ns}, "
            f"labels: {{kubernetes.io/service-name: {svc_name}}}}}\naddressType: {family}\nports: [{port}]\n"
            f"endpoints:\n{textwrap.indent(textwrap.dedent(endpoints).strip(), '')}\n---\n")


def kube_proxy_sorted(text: str) -> str:
    """The order kube-proxy's proxier_test compares in: per table, KUBE-NODEPORTS and KUBE-SERVICES
    first, then other chains by name; a chain's rules keep their order."""
    out = []
    for table in re.findall(r"(\*\w+\n.*?COMMIT\n)", text, re.S):
        lines = table.splitlines()
        chains = [line[1:].split()[0] for line in lines if line.startswith(":")]
        key = {"KUBE-NODEPORTS": "0", "KUBE-SERVICES": "1"}
        chains.sort(key=lambda c: key.get(c, "2" + c))
        rules = [line for line in lines if line.startswith("-A")]
        out.append(lines[0])
        out += [f":{c} - [0:0]" for c in chains]
        out += [r for c in chains for r in rules if r.split()[1] == c]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def test_chain_names_are_kube_proxys() -> None:
    # Values from kube-proxy's proxier_test.go (TestOverallIPTablesRules).
    assert service_chains("ns1/svc1:p80", "TCP")[0] == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert service_chains("ns2/svc2:p80", "TCP")[2] == "KUBE-EXT-GNZBNJ2PO5MGZ6GT"
    assert service_chains("ns5/svc5:p80", "TCP")[3] == "KUBE-FW-NUKIZ6OKUXPJNT4C"
    assert endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ"
    assert port_proto_hash("ns1/svc1:p80", "TCP") == port_proto_hash("ns1/svc1:p80", "tcp")


def test_probability_format() -> None:
    assert probability(3) == "0.3333333333" and probability(2) == "0.5000000000"


OVERALL = (
    svc("svc1", "clusterIP: 172.30.0.41\nports: [{name: p80, port: 80, protocol: TCP}]")
    + svc("svc2", """
        type: LoadBalancer
        externalTrafficPolicy: Local
        clusterIP: 172.30.0.42
        ports: [{name: p80, port: 80, protocol: TCP, nodePort: 3001}]
        externalIPs: [192.168.99.22]
        healthCheckNodePort: 30000""", "loadBalancer: {ingress: [{ip: 1.2.3.4}]}", ns="ns2")
    + svc("svc3", "type: NodePort\nclusterIP: 172.30.0.43\nports: [{name: p80, port: 80, protocol: TCP, nodePort: 3003}]",
          ns="ns3")
    + svc("svc4", "type: NodePort\nclusterIP: 172.30.0.44\nexternalIPs: [192.168.99.33]\n"
                  "ports: [{name: p80, port: 80, protocol: TCP, targetPort: 80}]", ns="ns4")
    + svc("svc5", """
        type: LoadBalancer
        externalTrafficPolicy: Cluster
        clusterIP: 172.30.0.45
        ports: [{name: p80, port: 80, protocol: TCP, nodePort: 3002}]
        healthCheckNodePort: 30000
        loadBalancerSourceRanges: [203.0.113.0/25]
        sessionAffinity: ClientIP
        sessionAffinityConfig: {clientIP: {timeoutSeconds: 10800}}""", "loadBalancer: {ingress: [{ip: 5.6.7.8}]}",
          ns="ns5")
    + svc("svc6", "clusterIP: 172.30.0.46\nports: [{name: p80, port: 80, protocol: TCP, targetPort: 80}]", ns="ns6")
    + eps("svc1", "- {addresses: [10.180.0.1]}")
    + eps("svc2", "- {addresses: [10.180.0.2]}", ns="ns2")
    + eps("svc3", "- {addresses: [10.180.0.3]}", ns="ns3")
    + eps("svc4", "- {addresses: [10.180.0.4]}\n- {addresses: [10.180.0.5], nodeName: test-node}", ns="ns4")
    + eps("svc5", "- {addresses: [10.180.0.3]}", ns="ns5")
)

# kube-proxy's TestOverallIPTablesRules expectation, minus what differs on purpose: no nfacct
# counters (kube-proxy adds them only where the kernel has nfnetlink_acct), MASQUERADE with
# --random-fully (what kube-proxy does when iptables supports it, as 1.8.9 does; its fake does not),
# and svcproxy's KUBE-PROXY-CANARY declared in the ruleset instead of by a separate monitor.
OVERALL_EXPECTED = """\
*filter
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A KUBE-NODEPORTS -m comment --comment "ns2/svc2:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT
-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-PROXY-FIREWALL -m comment --comment "ns5/svc5:p80 traffic not accepted by KUBE-FW-NUKIZ6OKUXPJNT4C" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j DROP
COMMIT
*nat
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXT-4SW47YFZTEDKD3PK - [0:0]
:KUBE-EXT-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-EXT-NUKIZ6OKUXPJNT4C - [0:0]
:KUBE-EXT-X27LE4BHSL4DOUIK - [0:0]
:KUBE-FW-NUKIZ6OKUXPJNT4C - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-SEP-C6EBXVWJJZMIWKLZ - [0:0]
:KUBE-SEP-I77PXRDZVX7PMWMN - [0:0]
:KUBE-SEP-OYPFS5VJICHGATKP - [0:0]
:KUBE-SEP-RS4RBKLTHTF2IUXJ - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SEP-UKSFD7AGPMPPLUHC - [0:0]
:KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]
:KUBE-SVC-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-SVC-NUKIZ6OKUXPJNT4C - [0:0]
:KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK
-A KUBE-NODEPORTS -m comment --comment ns5/svc5:p80 -m tcp -p tcp --dport 3002 -j KUBE-EXT-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 external IP" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 external IP" -m tcp -p tcp -d 192.168.99.33 --dport 80 -j KUBE-EXT-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 -j KUBE-SVC-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 loadbalancer IP" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j KUBE-FW-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-EXT-4SW47YFZTEDKD3PK -m comment --comment "masquerade traffic for ns4/svc4:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-4SW47YFZTEDKD3PK -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-NUKIZ6OKUXPJNT4C -m comment --comment "masquerade traffic for ns5/svc5:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-NUKIZ6OKUXPJNT4C -j KUBE-SVC-NUKIZ6OKUXPJNT4C
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 loadbalancer IP" -s 203.0.113.0/25 -j KUBE-EXT-NUKIZ6OKUXPJNT4C
-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "other traffic to ns5/svc5:p80 will be dropped by KUBE-PROXY-FIREWALL"
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -s 10.180.0.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 -> 10.180.0.2:80" -j KUBE-SEP-RS4RBKLTHTF2IUXJ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --rcheck --seconds 10800 --reap -j KUBE-SEP-I77PXRDZVX7PMWMN
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -j KUBE-SEP-I77PXRDZVX7PMWMN
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KUBE-SEP-OYPFS5VJICHGATKP
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
COMMIT
"""


def test_overall_rules_reproduce_kube_proxy() -> None:
    rs = build_ruleset(state_from(OVERALL), NODE, BlockCache())
    assert kube_proxy_sorted(format_ruleset(rs, NODE, with_jumps=False)) == OVERALL_EXPECTED


def render(text: str, cfg: NodeConfig = NODE) -> str:
    return format_ruleset(build_ruleset(state_from(text, cfg), cfg, BlockCache()), cfg)


def chain(text: str, name: str, table: str = "nat") -> list[str]:
    """The rules of one chain in one table of a rendered ruleset."""
    section = re.search(rf"\*{table}\n(.*?)COMMIT", text, re.S)
    assert section
    return [line for line in section.group(1).splitlines() if line.startswith(f"-A {name} ")]


WEB = svc("web", "clusterIP: 172.30.0.10\nports: [{name: p80, port: 80, protocol: TCP}]") + eps(
    "web", "- {addresses: [10.180.0.1]}\n- {addresses: [10.180.0.2]}\n- {addresses: [10.180.0.3]}")
WEB_SVC, WEB_SVL, WEB_EXT, WEB_FW = service_chains("ns1/web:p80", "TCP")


def test_clusterip_spreads_with_equal_shares_and_keeps_endpoint_order() -> None:
    rules = chain(render(WEB), WEB_SVC)
    assert [r.split("--probability ")[1].split()[0] for r in rules if "statistic" in r] == [
        "0.3333333333", "0.5000000000"]
    assert [r.split('-> ')[1].split('"')[0] for r in rules[1:]] == ["10.180.0.1:80", "10.180.0.2:80", "10.180.0.3:80"]
    assert "-j" in rules[-1] and "statistic" not in rules[-1]


def test_builtin_jumps_come_with_kube_proxys_comments() -> None:
    text = render(WEB)
    assert chain(text, "PREROUTING") == ['-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES']
    assert chain(text, "POSTROUTING") == [
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING']
    assert ('-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" '
            "-j KUBE-EXTERNAL-SERVICES") in chain(text, "INPUT", "filter")
    assert len(chain(text, "FORWARD", "filter")) == 4


def test_no_cluster_cidr_means_no_local_detector() -> None:
    cfg = dataclasses.replace(NODE, cluster_cidrs=())
    rules = chain(render(WEB, cfg), WEB_SVC)
    assert not any("KUBE-MARK-MASQ" in r for r in rules)


def test_masquerade_all() -> None:
    cfg = dataclasses.replace(NODE, masquerade_all=True)
    first = chain(render(WEB, cfg), WEB_SVC)[0]
    assert first.endswith("--dport 80 -j KUBE-MARK-MASQ") and "! -s" not in first


def test_hairpin_masquerades_an_endpoint_talking_to_itself() -> None:
    text = render(WEB)
    sep = endpoint_chain("ns1/web:p80", "tcp", "10.180.0.2:80")
    assert chain(text, sep) == [
        f"-A {sep} -m comment --comment ns1/web:p80 -s 10.180.0.2 -j KUBE-MARK-MASQ",
        f"-A {sep} -m comment --comment ns1/web:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80"]


def test_udp_and_sctp() -> None:
    text = render(svc("dns", "clusterIP: 172.30.0.53\nports: [{name: dns, port: 53, protocol: UDP}, "
                             "{name: s, port: 9, protocol: SCTP}]")
                  + eps("dns", "- {addresses: [10.180.0.9]}", port="{name: dns, port: 5353, protocol: UDP}"))
    assert "-m udp -p udp -d 172.30.0.53 --dport 53 -j KUBE-SVC-" in text
    assert "-m udp -p udp -j DNAT --to-destination 10.180.0.9:5353" in text
    # The SCTP port has no endpoints: rejected in the filter table.
    assert '"ns1/dns:s has no endpoints" -m sctp -p sctp -d 172.30.0.53 --dport 9 -j REJECT' in text


def test_session_affinity_uses_recent_with_timeout() -> None:
    text = render(svc("s", "clusterIP: 172.30.0.5\nsessionAffinity: ClientIP\n"
                           "sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n"
                           "ports: [{name: p80, port: 80, protocol: TCP}]") + eps("s", "- {addresses: [10.180.0.1]}"))
    sep = endpoint_chain("ns1/s:p80", "tcp", "10.180.0.1:80")
    assert f"-m recent --name {sep} --rcheck --seconds 600 --reap -j {sep}" in text
    assert f"-m recent --name {sep} --set -m tcp -p tcp -j DNAT" in text


LOCAL = svc("lw", """
    type: LoadBalancer
    externalTrafficPolicy: Local
    clusterIP: 172.30.0.20
    ports: [{name: p80, port: 80, protocol: TCP, nodePort: 30081}]
    healthCheckNodePort: 32000""", "loadBalancer: {ingress: [{ip: 192.168.100.20}]}") + eps(
    "lw", "- {addresses: [10.0.1.30], nodeName: test-node}\n- {addresses: [10.0.2.30], nodeName: test-node-2}")
LW_SVC, LW_SVL, LW_EXT, _ = service_chains("ns1/lw:p80", "TCP")


def test_external_traffic_policy_local() -> None:
    text = render(LOCAL)
    assert chain(text, LW_EXT) == [
        f'-A {LW_EXT} -m comment --comment "pod traffic for ns1/lw:p80 external destinations" -s 10.0.0.0/8 -j {LW_SVC}',
        f'-A {LW_EXT} -m comment --comment "masquerade LOCAL traffic for ns1/lw:p80 external destinations" '
        "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
        f'-A {LW_EXT} -m comment --comment "route LOCAL traffic for ns1/lw:p80 external destinations" '
        f"-m addrtype --src-type LOCAL -j {LW_SVC}",
        f"-A {LW_EXT} -j {LW_SVL}"]
    svl = chain(text, LW_SVL)
    assert len(svl) == 1 and "10.0.1.30:80" in svl[0]  # only this node's endpoint
    assert len([r for r in chain(text, LW_SVC) if "KUBE-SEP" in r]) == 2  # cluster traffic: both
    assert '"ns1/lw:p80 health check node port" -m tcp -p tcp --dport 32000 -j ACCEPT' in text
    # Without a local endpoint, external traffic is dropped; cluster traffic is still served.
    elsewhere = render(LOCAL.replace("nodeName: test-node}", "nodeName: test-node-3}"))
    assert 'has no local endpoints" -m tcp -p tcp -d 192.168.100.20 --dport 80 -j DROP' in elsewhere
    assert f"-j {LW_SVL}" not in elsewhere and f"-d 172.30.0.20 --dport 80 -j {LW_SVC}" in elsewhere


def test_internal_traffic_policy_local_without_local_endpoints_drops() -> None:
    text = render(svc("i", "clusterIP: 172.30.0.7\ninternalTrafficPolicy: Local\n"
                           "ports: [{name: p80, port: 80, protocol: TCP}]")
                  + eps("i", "- {addresses: [10.0.2.1], nodeName: test-node-2}"))
    assert '"ns1/i:p80 has no local endpoints" -m tcp -p tcp -d 172.30.0.7 --dport 80 -j DROP' in text
    assert "KUBE-SVC-" not in text and "KUBE-SVL-" not in text


def test_load_balancer_source_ranges_with_node_in_range() -> None:
    text = render(svc("g", """
        type: LoadBalancer
        clusterIP: 172.30.0.40
        loadBalancerSourceRanges: [192.168.0.0/30, 203.0.113.0/24]
        ports: [{name: p80, port: 80, protocol: TCP, nodePort: 30082}]""",
                      "loadBalancer: {ingress: [{ip: 192.168.100.40}]}") + eps("g", "- {addresses: [10.0.1.50]}"))
    _, _, ext, fw = service_chains("ns1/g:p80", "TCP")
    assert chain(text, fw) == [
        f'-A {fw} -m comment --comment "ns1/g:p80 loadbalancer IP" -s 192.168.0.0/30 -j {ext}',
        f'-A {fw} -m comment --comment "ns1/g:p80 loadbalancer IP" -s 203.0.113.0/24 -j {ext}',
        f'-A {fw} -m comment --comment "ns1/g:p80 loadbalancer IP" -s 192.168.100.40 -j {ext}',
        f'-A {fw} -m comment --comment "other traffic to ns1/g:p80 will be dropped by KUBE-PROXY-FIREWALL"']
    assert f"-d 192.168.100.40 --dport 80 -j {fw}" in text
    assert f'"ns1/g:p80 traffic not accepted by {fw}" -m tcp -p tcp -d 192.168.100.40 --dport 80 -j DROP' in text


def test_nodeport_addresses_and_localhost() -> None:
    np = svc("np", "type: NodePort\nclusterIP: 172.30.0.9\nports: [{name: p80, port: 80, protocol: TCP, "
                   "nodePort: 30090}]") + eps("np", "- {addresses: [10.180.0.1]}")
    tail = '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain"'
    assert chain(render(np), "KUBE-SERVICES")[-1] == f"{tail} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    no_local = dataclasses.replace(NODE, localhost_nodeports=False)
    text = render(np, no_local)
    assert chain(text, "KUBE-SERVICES")[-1].endswith("-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS")
    assert "KUBE-FIREWALL -m comment" not in text  # the localnet guard only comes with localhost NodePorts
    some = dataclasses.replace(NODE, local_addresses=("10.1.1.1",), nodeport_addresses=("192.168.0.0/24", "127.0.0.0/8"))
    assert chain(render(np, some), "KUBE-SERVICES")[-2:] == [
        f"{tail} -d 192.168.0.2 -j KUBE-NODEPORTS", f"{tail} -d 127.0.0.1 -j KUBE-NODEPORTS"]
    primary = dataclasses.replace(NODE, nodeport_addresses=("primary",))
    assert chain(render(np, primary), "KUBE-SERVICES")[-1] == f"{tail} -d 192.168.0.2 -j KUBE-NODEPORTS"


def test_ipv6() -> None:
    v6 = NodeConfig(hostname="test-node", ip_family=6, node_ips=("fd00::2",), cluster_cidrs=("fd00:10::/64",))
    text = render(svc("w6", "type: NodePort\nipFamilies: [IPv6]\nclusterIP: fd00:30::10\nclusterIPs: [fd00:30::10]\n"
                            "ports: [{name: p80, port: 80, protocol: TCP, nodePort: 30080}]")
                  + eps("w6", "- {addresses: ['fd00:10::5']}", family="IPv6"), v6)
    assert "-d fd00:30::10 --dport 80 ! -s fd00:10::/64 -j KUBE-MARK-MASQ" in text
    assert "-s fd00:10::5 -j KUBE-MARK-MASQ" in text and "--to-destination [fd00:10::5]:80" in text
    assert "-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS" in text
    assert "block incoming localnet" not in text  # IPv4 only


def test_large_cluster_mode_drops_endpoint_comments() -> None:
    many = svc("big", "clusterIP: 172.30.0.99\nports: [{name: p80, port: 80, protocol: TCP}]") + eps(
        "big", "\n".join(f"- {{addresses: [10.1.{i // 250}.{i % 250 + 1}]}}" for i in range(1001)))
    text = render(many)
    sep = endpoint_chain("ns1/big:p80", "tcp", "10.1.0.1:80")
    assert chain(text, sep)[0] == f"-A {sep} -s 10.1.0.1 -j KUBE-MARK-MASQ"
    assert chain(text, service_chains("ns1/big:p80", "TCP")[0])[1].startswith(
        f"-A {service_chains('ns1/big:p80', 'TCP')[0]} -m statistic --mode random --probability 0.0009990010")


def test_terminating_endpoints_are_not_used_while_ready_ones_exist() -> None:
    text = render(svc("t", "clusterIP: 172.30.0.6\nports: [{name: p80, port: 80, protocol: TCP}]") + eps(
        "t", "- {addresses: [10.180.0.1]}\n- addresses: [10.180.0.2]\n"
             "  conditions: {ready: false, serving: true, terminating: true}"))
    assert "10.180.0.1:80" in text and "10.180.0.2" not in text


def test_render_is_deterministic_and_cache_reuses_unchanged_services() -> None:
    state = state_from(OVERALL)
    cache = BlockCache()
    first = format_ruleset(build_ruleset(state, NODE, cache), NODE)
    assert cache.misses == 6
    assert format_ruleset(build_ruleset(state, NODE, cache), NODE) == first
    assert cache.misses == 0
    # Unchanged ServiceState objects are recognised by identity (no hashing of their endpoints).
    assert all(cache.by_service[key][0] is svc for key, svc in state.services.items())
    assert render_ruleset(state, NODE) == first


def test_render_cli_reports_bad_objects_and_renders_the_rest(tmp_path) -> None:
    (tmp_path / "good.yaml").write_text(WEB)
    (tmp_path / "bad.yaml").write_text(
        svc("broken", "clusterIP: 172.30.0.11\nports: [{name: p80, port: 99999, protocol: TCP}]", ns="team")
        + svc("badip", "clusterIP: 300.1.2.3\nports: [{name: p80, port: 80, protocol: TCP}]", ns="team")
        + svc("proto", "clusterIP: 172.30.0.12\nports: [{name: p80, port: 80, protocol: ICMP}]", ns="team"))
    result = CliRunner().invoke(main, ["render", "-f", str(tmp_path), "--hostname-override", "test-node",
                                       "--node-ip", "192.168.0.2", "--cluster-cidr", "10.0.0.0/8"])
    assert result.exit_code == 0, result.output
    err = result.stderr
    assert "team/broken" in err and "port" in err
    assert "team/badip" in err and "clusterIP" in err
    assert "team/proto" in err and "protocol" in err
    assert WEB_SVC in result.stdout and "172.30.0.11" not in result.stdout
    assert result.stdout.startswith("*filter\n") and result.stdout.endswith("COMMIT\n")
