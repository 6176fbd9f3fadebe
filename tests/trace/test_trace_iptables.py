"""iptables-save rulesets: every match and target the tracer knows, walked as the kernel would."""

from __future__ import annotations

import pytest
from trace_helpers import DATA, NODE, ipt, summary, trace

from svcproxy.netfilter import render_text

KP = (DATA / "kube-proxy.iptables").read_text()


# -- kube-proxy style node (upstream's test node: 192.168.0.2, ClusterIPs 172.30.0.0/16) -------------

@pytest.mark.parametrize("src,dst,port,expected", [
    # pod -> ClusterIP: DNAT to the one endpoint, no masquerade (pod traffic)
    ("10.0.0.2", "172.30.0.41", 80, {("ACCEPT", "10.180.0.1:80", False): 1.0}),
    # the node itself -> ClusterIP: starts at OUTPUT, masqueraded (not from the cluster CIDR)
    (NODE, "172.30.0.41", 80, {("ACCEPT", "10.180.0.1:80", True): 1.0}),
    # outside -> ClusterIP: masqueraded
    ("192.168.0.3", "172.30.0.41", 80, {("ACCEPT", "10.180.0.1:80", True): 1.0}),
    # two endpoints: 50/50
    ("10.0.0.2", "172.30.0.44", 80, {("ACCEPT", "10.180.0.4:80", False): 0.5, ("ACCEPT", "10.180.0.5:80", False): 0.5}),
    # no endpoints (filter KUBE-SERVICES rejects)... on svc4's external IP there is the KUBE-EXT chain first
    ("203.0.113.9", "192.168.99.33", 80, {("ACCEPT", "10.180.0.4:80", True): 0.5, ("ACCEPT", "10.180.0.5:80", True): 0.5}),
    # NodePort: masqueraded
    ("203.0.113.9", NODE, 3003, {("ACCEPT", "10.180.0.3:80", True): 1.0}),
    # NodePort of an eTP=Local service with no local endpoints: dropped by KUBE-EXTERNAL-SERVICES
    ("203.0.113.9", NODE, 3001, {("DROP", f"{NODE}:3001", False): 1.0}),
    # ... but pod traffic to it is short-circuited to the cluster-wide endpoints
    ("10.0.0.2", NODE, 3001, {("ACCEPT", "10.180.0.2:80", False): 1.0}),
    # external IP of the Local service from outside: dropped
    ("203.0.113.9", "192.168.99.22", 80, {("DROP", "192.168.99.22:80", False): 1.0}),
    # LoadBalancer with source ranges: allowed source, and a source outside the ranges
    ("203.0.113.5", "5.6.7.8", 80, {("ACCEPT", "10.180.0.3:80", True): 1.0}),
    ("203.0.113.200", "5.6.7.8", 80, {("DROP", "5.6.7.8:80", False): 1.0}),
    # not a service: untouched
    ("10.0.0.2", "8.8.8.8", 53, {("ACCEPT", "8.8.8.8:53", False): 1.0}),
    # a hairpin: an endpoint reaching its own service is masqueraded
    ("10.180.0.1", "172.30.0.41", 80, {("ACCEPT", "10.180.0.1:80", True): 1.0}),
])
def test_kube_proxy_node(src: str, dst: str, port: int, expected: dict) -> None:
    r = trace(KP, src, dst, port)
    assert summary(r) == expected
    assert abs(sum(o.probability for o in r.outcomes) - 1.0) < 1e-9
    assert r.warnings == []


def test_kube_proxy_json_contract() -> None:
    r = trace(KP, "10.0.0.2", "172.30.0.44", 80)
    d = r.to_dict()
    assert list(d) == ["verdict", "endpoints", "masquerade", "outcomes", "path"]
    assert d["verdict"] == "ACCEPT" and d["endpoints"] == ["10.180.0.4:80", "10.180.0.5:80"]
    assert d["masquerade"] is False
    assert all(set(o) == {"probability", "verdict", "endpoint", "masquerade"} for o in d["outcomes"])
    assert any("KUBE-SVC-4SW47YFZTEDKD3PK" in p for p in d["path"])
    assert any("DNAT to 10.180.0.5:80" in p for p in d["path"])


def test_kube_proxy_session_affinity_is_sticky() -> None:
    r = trace(KP, "10.0.0.2", "172.30.0.45", 80)
    assert r.endpoints == ["10.180.0.3:80"]
    assert r.sticky and r.affinity[0].name == "KUBE-SEP-I77PXRDZVX7PMWMN"
    assert r.affinity[0].endpoints == ("10.180.0.3:80",)
    assert r.outcomes[0].sticky == ("KUBE-SEP-I77PXRDZVX7PMWMN",)
    assert any("sticky" in p for p in r.path)


def test_no_endpoints_rejected() -> None:
    rules = ipt(filter="""
        -A OUTPUT -m conntrack --ctstate NEW -j KUBE-SERVICES
        -A FORWARD -m conntrack --ctstate NEW -j KUBE-SERVICES
        -A KUBE-SERVICES -m comment --comment "ns/svc:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.50 --dport 80 -j REJECT --reject-with icmp-port-unreachable
    """)
    assert summary(trace(rules, "10.0.0.2", "172.30.0.50", 80)) == {("REJECT", "172.30.0.50:80", False): 1.0}
    assert summary(trace(rules, NODE, "172.30.0.50", 80)) == {("REJECT", "172.30.0.50:80", False): 1.0}
    # another port of the same address is not matched
    assert trace(rules, "10.0.0.2", "172.30.0.50", 81).verdict == "ACCEPT"
    r = trace(rules, "10.0.0.2", "172.30.0.50", 80)
    assert r.verdict == "REJECT" and r.endpoints == []


# -- matches ---------------------------------------------------------------------------------------

def test_addresses_masks_and_negation() -> None:
    rules = ipt(filter="""
        -A FORWARD -s 10.1.0.0/16 -j DROP
        -A FORWARD ! -d 192.168.0.0/16 -j REJECT
        -A FORWARD -d 192.168.5.5/32 -j ACCEPT
        -A FORWARD -j DROP
    """)
    assert trace(rules, "10.1.2.3", "192.168.5.5", 80).verdict == "DROP"
    assert trace(rules, "10.2.2.3", "8.8.8.8", 80).verdict == "REJECT"
    assert trace(rules, "10.2.2.3", "192.168.5.5", 80).verdict == "ACCEPT"
    assert trace(rules, "10.2.2.3", "192.168.5.6", 80).verdict == "DROP"


def test_protocol_ports_and_multiport() -> None:
    rules = ipt(filter="""
        -A FORWARD -p udp --dport 53 -j ACCEPT
        -A FORWARD -p tcp -m tcp --sport 1000:2000 -j ACCEPT
        -A FORWARD -p tcp -m multiport --dports 80,443:445 -j ACCEPT
        -A FORWARD -p sctp -m sctp --dport 9 -j ACCEPT
        -A FORWARD -j DROP
    """)
    assert trace(rules, "10.0.0.1", "10.0.0.9", 53, "UDP").verdict == "ACCEPT"
    assert trace(rules, "10.0.0.1", "10.0.0.9", 53, "TCP").verdict == "DROP"
    assert trace(rules, "10.0.0.1", "10.0.0.9", 444).verdict == "ACCEPT"
    assert trace(rules, "10.0.0.1", "10.0.0.9", 80).verdict == "ACCEPT"
    assert trace(rules, "10.0.0.1", "10.0.0.9", 81).verdict == "DROP"
    assert trace(rules, "10.0.0.1", "10.0.0.9", 9, "SCTP").verdict == "ACCEPT"
    from svcproxy.netfilter import trace_packet
    assert trace_packet(rules, "10.0.0.1", "10.0.0.9", 81, source_port=1500).verdict == "ACCEPT"


def test_addrtype_uses_local_addresses_and_loopback() -> None:
    rules = ipt(nat="""
        -A PREROUTING -m addrtype --dst-type LOCAL -p tcp --dport 30000 -j DNAT --to-destination 10.9.9.9:80
        -A OUTPUT -m addrtype --dst-type LOCAL -p tcp --dport 30000 -j DNAT --to-destination 10.9.9.8:80
        -A OUTPUT -m addrtype ! --dst-type LOCAL -p tcp --dport 30001 -j DNAT --to-destination 10.9.9.7:80
    """)
    assert trace(rules, "1.2.3.4", NODE, 30000).endpoints == ["10.9.9.9:80"]
    assert trace(rules, "1.2.3.4", "192.168.0.77", 30000).endpoints == ["192.168.0.77:30000"]
    assert trace(rules, "1.2.3.4", "192.168.0.77", 30000, local=("192.168.0.77",)).endpoints == ["10.9.9.9:80"]
    # from the node (source 127.0.0.1 is local): OUTPUT; 127.0.0.1 is LOCAL
    assert trace(rules, "127.0.0.1", "127.0.0.1", 30000).endpoints == ["10.9.9.8:80"]
    assert trace(rules, NODE, "10.1.1.1", 30001).endpoints == ["10.9.9.7:80"]
    assert trace(rules, NODE, NODE, 30001).endpoints == [f"{NODE}:30001"]


def test_mark_set_xmark_or_xor_and_match() -> None:
    rules = ipt(mangle="""
        -A PREROUTING -s 10.0.0.0/8 -j MARK --set-xmark 0x4000/0x4000
        -A PREROUTING -p udp -j MARK --or-mark 0x8000
    """, nat="""
        -A POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
        -A POSTROUTING -j MARK --xor-mark 0x4000
        -A POSTROUTING -m mark --mark 0x0/0x4000 -j MASQUERADE
    """, filter="""
        -A FORWARD -m mark --mark 0xc000 -j DROP
    """)
    assert summary(trace(rules, "10.0.0.1", "1.1.1.1", 80)) == {("ACCEPT", "1.1.1.1:80", True): 1.0}
    assert summary(trace(rules, "11.0.0.1", "1.1.1.1", 80)) == {("ACCEPT", "1.1.1.1:80", False): 1.0}
    assert trace(rules, "10.0.0.1", "1.1.1.1", 80, "UDP").verdict == "DROP"  # 0x4000|0x8000
    path = trace(rules, "10.0.0.1", "1.1.1.1", 80).path
    assert any("mark 0x0 -> 0x4000" in p for p in path)
    assert any("mark 0x4000 -> 0x0" in p for p in path)


def test_statistic_random_branches_and_nth() -> None:
    rules = ipt(nat="""
        -A PREROUTING -d 172.30.0.1 -p tcp --dport 80 -j KUBE-SVC-A
        -A KUBE-SVC-A -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-1
        -A KUBE-SVC-A -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-2
        -A KUBE-SVC-A -j KUBE-SEP-3
        -A KUBE-SEP-1 -p tcp -j DNAT --to-destination 10.180.0.1:8080
        -A KUBE-SEP-2 -p tcp -j DNAT --to-destination 10.180.0.2:8080
        -A KUBE-SEP-3 -p tcp -j DNAT --to-destination 10.180.0.3:8080
        -A PREROUTING -d 172.30.0.2 -m statistic --mode nth --every 4 --packet 0 -j DNAT --to-destination 10.180.1.1
        -A PREROUTING -d 172.30.0.2 -j DNAT --to-destination 10.180.1.2
    """)
    r = trace(rules, "10.0.0.5", "172.30.0.1", 80)
    got = summary(r)
    assert set(got) == {("ACCEPT", f"10.180.0.{i}:8080", False) for i in (1, 2, 3)}
    assert all(abs(p - 1 / 3) < 1e-6 for p in got.values())
    assert any("p=0.3333" in p and "taken" in p for p in r.path)
    r = trace(rules, "10.0.0.5", "172.30.0.2", 80)
    assert summary(r) == {("ACCEPT", "10.180.1.1:80", False): 0.25, ("ACCEPT", "10.180.1.2:80", False): 0.75}


def test_recent_affinity_returning_client_follows_hit_branch() -> None:
    rules = ipt(nat="""
        -A PREROUTING -d 172.30.0.1 -j KUBE-SVC-A
        -A KUBE-SVC-A -m recent --name KUBE-SEP-1 --mask 255.255.255.255 --rsource --rcheck --seconds 10800 --reap -j KUBE-SEP-1
        -A KUBE-SVC-A -m recent --name KUBE-SEP-2 --mask 255.255.255.255 --rsource --rcheck --seconds 10800 --reap -j KUBE-SEP-2
        -A KUBE-SVC-A -m statistic --mode random --probability 0.5 -j KUBE-SEP-1
        -A KUBE-SVC-A -j KUBE-SEP-2
        -A KUBE-SEP-1 -m recent --name KUBE-SEP-1 --mask 255.255.255.255 --rsource --set -p tcp -j DNAT --to-destination 10.180.0.1:80
        -A KUBE-SEP-2 -m recent --name KUBE-SEP-2 --mask 255.255.255.255 --rsource --set -p tcp -j DNAT --to-destination 10.180.0.2:80
    """)
    r = trace(rules, "10.0.0.5", "172.30.0.1", 80)
    assert summary(r) == {("ACCEPT", "10.180.0.1:80", False): 0.5, ("ACCEPT", "10.180.0.2:80", False): 0.5}
    assert {a.name: a.endpoints for a in r.affinity} == {"KUBE-SEP-1": ("10.180.0.1:80",),
                                                          "KUBE-SEP-2": ("10.180.0.2:80",)}
    assert all(abs(a.probability - 0.5) < 1e-9 for a in r.affinity)
    assert "sticky" in render_text(r)


def test_conntrack_state_new() -> None:
    rules = ipt(filter="""
        -A FORWARD -m conntrack --ctstate INVALID -j DROP
        -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j DROP
        -A FORWARD -m state --state NEW -p tcp --dport 22 -j REJECT
        -A FORWARD -m conntrack ! --ctstate NEW -j DROP
    """)
    assert trace(rules, "10.0.0.1", "10.0.0.2", 80).verdict == "ACCEPT"
    assert trace(rules, "10.0.0.1", "10.0.0.2", 22).verdict == "REJECT"


def test_interfaces_and_physdev_are_warned_not_skipped() -> None:
    rules = ipt(filter="""
        -A INPUT -i lo -j ACCEPT
        -A INPUT -i eth0 -j DROP
        -A FORWARD -m physdev --physdev-is-in -j DROP
        -A FORWARD -o eth1 -j DROP
    """)
    # from outside to the node: the in-interface is unknown: the rule is named in the warnings
    r = trace(rules, "10.0.0.1", NODE, 80)
    assert r.verdict == "ACCEPT"
    assert any("line" in w and "-i lo" in w and "interface unknown" in w for w in r.warnings)
    r = trace(rules, "10.0.0.1", "10.0.0.9", 80)
    assert r.verdict == "ACCEPT"
    assert any("physdev" in w and "physdev-is-in" in w for w in r.warnings)
    assert any("-o eth1" in w for w in r.warnings)
    # a local connection to a local address comes back in on lo
    r = trace(rules, NODE, NODE, 80)
    assert r.verdict == "ACCEPT" and not any("-i lo" in w for w in r.warnings)


def test_targets_accept_drop_return_log_goto_and_policy() -> None:
    rules = ipt(filter="""
        :INPUT DROP [0:0]
        -A INPUT -j LOG --log-prefix "in: "
        -A INPUT -p tcp --dport 22 -j X-SSH
        -A INPUT -p tcp --dport 23 -g X-TELNET
        -A INPUT -p tcp --dport 80 -j ACCEPT
        -A X-SSH -s 10.0.0.0/8 -j RETURN
        -A X-SSH -j ACCEPT
        -A X-TELNET -s 10.0.0.0/8 -j RETURN
        -A X-TELNET -j REJECT
    """)
    assert trace(rules, "10.0.0.1", NODE, 80).verdict == "ACCEPT"
    assert trace(rules, "10.0.0.1", NODE, 81).verdict == "DROP"  # policy
    assert any("policy DROP" in p for p in trace(rules, "10.0.0.1", NODE, 81).path)
    assert trace(rules, "11.0.0.1", NODE, 22).verdict == "ACCEPT"
    assert trace(rules, "10.0.0.1", NODE, 22).verdict == "DROP"  # RETURN, then falls to the policy
    assert trace(rules, "11.0.0.1", NODE, 23).verdict == "REJECT"
    # goto: RETURN from X-TELNET goes back past INPUT's rule 80 straight to INPUT's caller: the policy
    assert trace(rules, "10.0.0.1", NODE, 23).verdict == "DROP"
    assert any("LOG in:" in p for p in trace(rules, "10.0.0.1", NODE, 80).path)
    # forwarded traffic never sees INPUT
    assert trace(rules, "10.0.0.1", "10.0.0.9", 22).verdict == "ACCEPT"


def test_snat_masquerade_and_dnat_without_port() -> None:
    rules = ipt(nat="""
        -A PREROUTING -d 1.2.3.4 -j DNAT --to-destination 10.0.0.9
        -A POSTROUTING -d 10.0.0.9 -j SNAT --to-source 192.168.0.2
        -A POSTROUTING -d 10.0.0.10 -j MASQUERADE --random-fully
    """)
    assert summary(trace(rules, "8.8.8.8", "1.2.3.4", 443)) == {("ACCEPT", "10.0.0.9:443", True): 1.0}
    assert summary(trace(rules, "8.8.8.8", "10.0.0.10", 443)) == {("ACCEPT", "10.0.0.10:443", True): 1.0}
    assert summary(trace(rules, "8.8.8.8", "10.0.0.11", 443)) == {("ACCEPT", "10.0.0.11:443", False): 1.0}
    assert any("SNAT to 192.168.0.2" in p for p in trace(rules, "8.8.8.8", "1.2.3.4", 443).path)


def test_hook_order_raw_mangle_nat_filter_and_notrack() -> None:
    rules = ipt(raw="""
        -A PREROUTING -d 172.30.0.9 -j NOTRACK
    """, mangle="""
        -A PREROUTING -j MARK --set-xmark 0x1/0xffffffff
    """, nat="""
        -A PREROUTING -m mark --mark 0x1 -d 172.30.0.0/16 -j DNAT --to-destination 10.0.0.1:80
    """, filter="""
        -A FORWARD -d 172.30.0.9 -j REJECT
    """)
    # mangle ran before nat: the mark is seen, the DNAT happens
    assert trace(rules, "10.9.0.1", "172.30.0.8", 80).endpoints == ["10.0.0.1:80"]
    # NOTRACK in raw: no connection tracking, so no NAT
    assert summary(trace(rules, "10.9.0.1", "172.30.0.9", 80)) == {("REJECT", "172.30.0.9:80", False): 1.0}


def test_dnat_to_local_address_goes_to_input() -> None:
    rules = ipt(nat="""
        -A PREROUTING -d 172.30.0.1 -j DNAT --to-destination 192.168.0.2:8080
    """, filter="""
        :INPUT DROP [0:0]
        :FORWARD DROP [0:0]
        -A INPUT -p tcp --dport 8080 -j ACCEPT
    """)
    r = trace(rules, "10.0.0.1", "172.30.0.1", 80)
    assert summary(r) == {("ACCEPT", f"{NODE}:8080", False): 1.0}
    assert "INPUT" in r.path and "FORWARD" not in r.path
    # the node to itself: OUTPUT, POSTROUTING, then in on loopback: PREROUTING (nat not again), INPUT
    r = trace(rules, NODE, NODE, 8080)
    assert r.verdict == "ACCEPT"
    assert [p for p in r.path if p.isupper()] == ["OUTPUT", "POSTROUTING", "PREROUTING", "INPUT"]


def test_ipv6_ruleset() -> None:
    rules = ipt(nat="""
        -A PREROUTING -d fd00:30::1/128 -p tcp -m tcp --dport 80 -j KUBE-SVC-A
        -A KUBE-SVC-A ! -s fd00:10::/64 -j KUBE-MARK-MASQ
        -A KUBE-SVC-A -j DNAT --to-destination [fd00:10::5]:8080
        -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
        -A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE
    """).replace("iptables-save", "ip6tables-save")
    r = trace(rules, "fd00:10::9", "fd00:30::1", 80, local=("fd00::2",))
    assert r.endpoints == ["[fd00:10::5]:8080"] and not r.masquerade
    r = trace(rules, "2001:db8::1", "fd00:30::1", 80, local=("fd00::2",))
    assert r.endpoints == ["[fd00:10::5]:8080"] and r.masquerade
    assert r.to_dict()["outcomes"][0]["endpoint"] == "[fd00:10::5]:8080"


def test_unevaluable_rules_are_named_in_warnings() -> None:
    rules = ipt(filter="""
        -A FORWARD -m set --match-set blocked src -j DROP
        -A FORWARD -m limit --limit 5/sec -j ACCEPT
    """)
    r = trace(rules, "10.0.0.1", "10.0.0.2", 80)
    assert r.verdict == "ACCEPT"
    assert any(w.startswith("line ") and "limit" in w for w in r.warnings)
    assert any("ipset" in w for w in r.warnings)
    assert "warning:" in render_text(r)


def test_dnat_to_a_range_is_named_in_the_warnings() -> None:
    rules = ipt(nat="-A PREROUTING -d 1.2.3.4 -j DNAT --to-destination 10.0.0.1-10.0.0.3:80-90")
    r = trace(rules, "8.8.8.8", "1.2.3.4", 443)
    assert r.endpoints == ["10.0.0.1:80"]
    assert any("line 3" in w and "first address" in w for w in r.warnings)


def test_tcp_flags_of_a_new_connection() -> None:
    rules = ipt(filter="""
        -A FORWARD -p tcp -m tcp --dport 1 --tcp-flags SYN,ACK SYN,ACK -j DROP
        -A FORWARD -p tcp -m tcp --dport 2 ! --syn -j DROP
        -A FORWARD -p tcp -m tcp --dport 3 --syn -j REJECT
        -A FORWARD -p tcp -m tcp --dport 4 --tcp-flags ALL SYN -j REJECT
        -A FORWARD -p tcp -m tcp --dport 5 --tcp-flags FIN,SYN,RST,ACK RST -j REJECT
    """)
    assert [trace(rules, "10.0.0.1", "10.0.0.2", p).verdict for p in (1, 2, 3, 4, 5)] == \
        ["ACCEPT", "ACCEPT", "REJECT", "REJECT", "ACCEPT"]


def test_counters_and_insert_lines() -> None:
    rules = """*filter
:FORWARD ACCEPT [10:600]
[3:180] -A FORWARD -d 10.0.0.2/32 -j DROP
-I FORWARD 1 -d 10.0.0.2/32 -p tcp --dport 80 -j ACCEPT
COMMIT
"""
    assert trace(rules, "10.0.0.1", "10.0.0.2", 80).verdict == "ACCEPT"  # -I 1 put it first
    assert trace(rules, "10.0.0.1", "10.0.0.2", 81).verdict == "DROP"
