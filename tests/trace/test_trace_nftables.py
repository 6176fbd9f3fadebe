"""nftables rulesets, as text and as `nft -j` JSON: tables, hooks, priorities, sets, maps, numgen..."""

from __future__ import annotations

import json

import pytest
from trace_helpers import NODE, summary, trace

from svcproxy.netfilter import parse_rules
from svcproxy.netfilter.nft_text import parse_nft_document

FIREWALL = """
table inet filter {
	set blocked {
		type ipv4_addr
		flags interval
		elements = { 10.66.0.0/16, 10.77.0.1-10.77.0.9 }
	}
	set web {
		type inet_proto . inet_service
		elements = { tcp . 80, tcp . 443 }
	}
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		iif "lo" accept
		ip saddr @blocked counter packets 3 bytes 180 drop
		meta l4proto . th dport @web accept
		tcp dport { 22, 2222 } ip saddr 10.0.0.0/8 accept
		udp dport 1000-2000 jump udp-ports
		meta mark & 0x00000010 == 0x00000010 accept
		tcp dport 25 reject with tcp reset
	}
	chain udp-ports {
		udp dport 1500 return
		accept
	}
	chain mangle-pre {
		type filter hook prerouting priority mangle; policy accept;
		tcp dport 8443 meta mark set meta mark | 0x10
	}
}
"""

NAT = """
table ip nat {
	map svc {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 172.30.0.1 . tcp . 80 : goto svc-a,
			172.30.0.2 . udp . 53 : jump svc-b }
	}
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr . meta l4proto . th dport vmap @svc
		fib daddr type local tcp dport 30080 goto svc-a
	}
	chain out {
		type nat hook output priority -100; policy accept;
		ip daddr . meta l4proto . th dport vmap @svc
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		mark and 0x4000 == 0 return
		mark set mark xor 0x4000
		masquerade fully-random
	}
	chain svc-a {
		ip saddr != 10.0.0.0/16 mark set mark or 0x4000
		numgen random mod 4 vmap { 0-1 : goto ep-1, 2 : goto ep-2, 3 : goto ep-3 }
	}
	chain svc-b {
		numgen random mod 2 offset 5 vmap { 5 : goto ep-dns }
		drop
	}
	chain ep-1 {
		meta l4proto tcp dnat to 10.0.1.1:8080
	}
	chain ep-2 {
		meta l4proto tcp dnat ip to 10.0.1.2:8080
	}
	chain ep-3 {
		dnat to 10.0.1.3
	}
	chain ep-dns {
		meta l4proto udp dnat to 10.0.1.53:5353
	}
	chain snat-post {
		type nat hook postrouting priority srcnat + 10; policy accept;
		ip daddr 10.0.9.9 snat to 192.168.0.2
	}
}
"""


def test_filter_table_hooks_sets_and_policy() -> None:
    assert trace(FIREWALL, "10.66.1.1", NODE, 80).verdict == "DROP"  # interval set (CIDR)
    assert trace(FIREWALL, "10.77.0.5", NODE, 80).verdict == "DROP"  # interval set (range)
    assert trace(FIREWALL, "10.77.0.10", NODE, 80).verdict == "ACCEPT"  # concatenated set
    assert trace(FIREWALL, "10.77.0.10", NODE, 8080).verdict == "DROP"  # policy drop
    assert trace(FIREWALL, "10.1.1.1", NODE, 2222).verdict == "ACCEPT"  # anonymous set
    assert trace(FIREWALL, "11.1.1.1", NODE, 2222).verdict == "DROP"
    assert trace(FIREWALL, "11.1.1.1", NODE, 1200, "UDP").verdict == "ACCEPT"  # jump, accept in callee
    assert trace(FIREWALL, "11.1.1.1", NODE, 1500, "UDP").verdict == "DROP"  # return, then the policy
    assert trace(FIREWALL, "11.1.1.1", NODE, 8443).verdict == "ACCEPT"  # mark set at prerouting (mangle)
    assert trace(FIREWALL, "11.1.1.1", NODE, 25).verdict == "REJECT"
    assert trace(FIREWALL, "11.1.1.1", "11.2.2.2", 25).verdict == "ACCEPT"  # forwarded: no input chain
    assert trace(FIREWALL, NODE, NODE, 9999).verdict == "ACCEPT"  # iif lo on the way back in


def test_nat_vmap_concatenation_numgen_fib_masquerade() -> None:
    r = trace(NAT, "10.0.5.5", "172.30.0.1", 80)
    assert summary(r) == {("ACCEPT", "10.0.1.1:8080", False): 0.5, ("ACCEPT", "10.0.1.2:8080", False): 0.25,
                          ("ACCEPT", "10.0.1.3:80", False): 0.25}
    assert any("numgen 0,1 of mod 4" in p for p in r.path)
    r = trace(NAT, "10.1.5.5", "172.30.0.1", 80)
    assert r.masquerade and r.endpoints == ["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:80"]
    # numgen offset and a value with no map entry: that branch falls through to `drop`
    r = trace(NAT, "10.0.5.5", "172.30.0.2", 53, "UDP")
    assert summary(r) == {("ACCEPT", "10.0.1.53:5353", False): 0.5, ("DROP", "172.30.0.2:53", False): 0.5}
    # fib daddr type local: a node port on a local address only
    assert trace(NAT, "10.0.5.5", NODE, 30080).endpoints == ["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:30080"]
    assert trace(NAT, "10.0.5.5", "192.168.0.99", 30080).endpoints == ["192.168.0.99:30080"]
    # the node itself: output hook
    assert trace(NAT, NODE, "172.30.0.1", 80).masquerade
    # snat in a second postrouting chain (priority srcnat + 10)
    assert summary(trace(NAT, "10.0.5.5", "10.0.9.9", 80)) == {("ACCEPT", "10.0.9.9:80", True): 1.0}


def test_text_to_document_matches_nft_json_schema() -> None:
    doc = parse_nft_document(NAT)["nftables"]
    rules = [o["rule"] for o in doc if "rule" in o]
    vmap = rules[0]["expr"][0]["vmap"]
    assert vmap["key"] == {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}}, {"meta": {"key": "l4proto"}},
                                      {"payload": {"protocol": "th", "field": "dport"}}]}
    assert vmap["data"] == "@svc"
    chains = {o["chain"]["name"]: o["chain"] for o in doc if "chain" in o}
    assert chains["pre"]["prio"] == -100 and chains["post"]["prio"] == 100 and chains["snat-post"]["prio"] == 110


def test_json_input_same_as_text() -> None:
    doc = parse_nft_document(NAT)
    text_json = json.dumps({"nftables": [{k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")}}
                                         for o in doc["nftables"] for k, v in o.items()]})
    for args in [("10.0.5.5", "172.30.0.1", 80), ("10.0.5.5", "172.30.0.2", 53, "UDP")]:
        assert summary(trace(text_json, *args)) == summary(trace(NAT, *args))
    assert parse_rules(text_json).format == "nftables"


def test_dynamic_set_is_session_affinity() -> None:
    rules = """
table ip kube-proxy {
	set affinity-a {
		type ipv4_addr
		flags dynamic,timeout
		timeout 3h
	}
	set affinity-b {
		type ipv4_addr
		flags dynamic,timeout
		timeout 3h
	}
	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 172.30.0.30 tcp dport 80 goto service-x
	}
	chain service-x {
		ip saddr @affinity-a goto endpoint-a
		ip saddr @affinity-b goto endpoint-b
		numgen random mod 2 vmap { 0 : goto endpoint-a, 1 : goto endpoint-b }
	}
	chain endpoint-a {
		update @affinity-a { ip saddr }
		meta l4proto tcp dnat to 10.0.1.40:8080
	}
	chain endpoint-b {
		update @affinity-b { ip saddr }
		meta l4proto tcp dnat to 10.0.2.40:8080
	}
}
"""
    r = trace(rules, "10.0.0.9", "172.30.0.30", 80)
    assert r.endpoints == ["10.0.1.40:8080", "10.0.2.40:8080"]
    assert {a.name: a.endpoints for a in r.affinity} == {"affinity-a": ("10.0.1.40:8080",),
                                                          "affinity-b": ("10.0.2.40:8080",)}
    assert any("recorded in affinity-a for 3h" in p for p in r.path)


def test_ipv6_and_inet_family() -> None:
    rules = """
table ip6 kube-proxy {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip6 daddr fd00:30::1 tcp dport 80 dnat to [fd00:10::5]:8080
	}
}
table inet filter {
	chain fwd {
		type filter hook forward priority filter; policy accept;
		ip6 daddr fd00:10::6 drop
		ip daddr 10.0.0.6 drop
	}
}
"""
    assert trace(rules, "fd00:99::1", "fd00:30::1", 80, local=()).endpoints == ["[fd00:10::5]:8080"]
    assert trace(rules, "fd00:99::1", "fd00:10::6", 80, local=()).verdict == "DROP"
    assert trace(rules, "10.9.9.9", "10.0.0.6", 80, local=()).verdict == "DROP"
    assert trace(rules, "10.9.9.9", "10.0.0.7", 80, local=()).verdict == "ACCEPT"


def test_unevaluable_nft_statements_warn() -> None:
    rules = """
table ip t {
	chain fwd {
		type filter hook forward priority 0; policy accept;
		iifname "eth0" drop
		limit rate 10/second accept
	}
}
"""
    r = trace(rules, "10.0.0.1", "10.0.0.2", 80)
    assert r.verdict == "ACCEPT"
    assert any(w.startswith("line 5") and 'iifname "eth0"' in w for w in r.warnings)
    assert any(w.startswith("line 6") and "limit" in w for w in r.warnings)


@pytest.mark.parametrize("policy,verdict", [("accept", "ACCEPT"), ("drop", "DROP")])
def test_base_chain_policy(policy: str, verdict: str) -> None:
    rules = f"table ip t {{\n chain fwd {{\n  type filter hook forward priority 0; policy {policy};\n }}\n}}\n"
    assert trace(rules, "10.0.0.1", "10.0.0.2", 80).verdict == verdict


def test_iptables_nft_extensions_are_warned() -> None:
    rules = """
table ip filter {
	chain FORWARD {
		type filter hook forward priority filter; policy accept;
		ip daddr 10.0.0.9 xt match "statistic" counter packets 0 bytes 0 drop
	}
}
"""
    r = trace(rules, "10.0.0.1", "10.0.0.9", 80)
    assert r.verdict == "DROP"
    assert any(w.startswith("line 5") and "statistic" in w and "xt" in w for w in r.warnings)


def test_icmp_and_tcp_flags_rules_do_not_stop_the_walk() -> None:
    rules = """
table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		icmp type echo-request accept
		icmpv6 type { echo-request, nd-neighbor-solicit } accept
		tcp dport 22 tcp flags syn accept
		tcp dport 23 tcp flags != syn reject
	}
}
"""
    assert trace(rules, "10.0.0.1", NODE, 22).verdict == "ACCEPT"
    assert trace(rules, "10.0.0.1", NODE, 23).verdict == "DROP"
    assert trace(rules, "10.0.0.1", NODE, 53, "UDP").verdict == "DROP"
