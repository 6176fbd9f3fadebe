"""Bad input: a clear error naming the line, never a hang."""

from __future__ import annotations

import json

import pytest
from trace_helpers import ipt

from svcproxy.netfilter import TraceError, trace_packet


def error_of(rules: str, dst: str = "172.30.0.1", port: int = 80, src: str = "10.0.0.1") -> str:
    with pytest.raises(TraceError) as e:
        trace_packet(rules, src, dst, port, local_addresses=["192.168.0.2"])
    return str(e.value)


@pytest.mark.timeout(10)
def test_loop_of_jumps_is_an_error_with_the_line() -> None:
    rules = ipt(nat="""
        -A PREROUTING -j X-A
        -A X-A -j X-B
        -A X-B -d 172.30.0.1 -j X-A
    """)
    msg = error_of(rules)
    assert "loop of jumps: X-A -> X-B -> X-A" in msg
    assert msg.startswith("line 7:") and "-A X-B -d 172.30.0.1 -j X-A" in msg
    # a packet that does not take the looping rule is traced normally
    assert trace_packet(rules, "10.0.0.1", "172.30.0.2", 80).verdict == "ACCEPT"


@pytest.mark.timeout(10)
def test_nft_loop_through_goto() -> None:
    rules = "table ip t {\n chain a {\n  type filter hook forward priority 0;\n  goto b\n }\n chain b {\n  jump c\n }\n chain c {\n  goto b\n }\n}\n"
    msg = error_of(rules)
    assert "loop of jumps" in msg and msg.startswith("line 10:")


@pytest.mark.parametrize("rule,expected", [
    ("-A FORWARD -m bogus --foo 1 -j DROP", "unknown match -m bogus"),
    ("-A FORWARD -p tcp --frobnicate 1 -j DROP", "unknown option --frobnicate"),
    ("-A FORWARD -d", "-d needs an address"),
    ("-A FORWARD -d 10.0.0.300 -j DROP", "'10.0.0.300' is not an address or CIDR"),
    ("-A FORWARD -j NO-SUCH-CHAIN", "unknown target or chain 'NO-SUCH-CHAIN'"),
    ("-A FORWARD -m statistic --mode random -j DROP", "statistic needs"),
    ("-A FORWARD -j MARK", "MARK needs"),
    ("-A FORWARD -p tcp --dport eighty -j DROP", "'eighty' is not a port"),
])
def test_malformed_iptables_rule(rule: str, expected: str) -> None:
    rules = f"*filter\n:FORWARD ACCEPT [0:0]\n{rule}\nCOMMIT\n"
    msg = error_of(rules, dst="10.0.0.2")
    assert msg.startswith("line 3:"), msg
    assert expected in msg and rule in msg


@pytest.mark.parametrize("text,expected,line", [
    ("*filter\n-A NOPE -j DROP\nCOMMIT\n", "chain 'NOPE', which table filter does not declare", 2),
    ("*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j DROP\n", "not closed with COMMIT", None),
    ("*bogus\nCOMMIT\n", "unknown table 'bogus'", 1),
    ("*filter\nwhat is this\nCOMMIT\n", "cannot read this line", 2),
])
def test_malformed_iptables_file(text: str, expected: str, line: int | None) -> None:
    msg = error_of(text)
    assert expected in msg
    if line:
        assert msg.startswith(f"line {line}:")


@pytest.mark.parametrize("body,expected,line", [
    ("  frobnicate 7 accept\n", "unknown expression 'frobnicate'", 4),
    ("  ip daddr 10.0.0.300 drop\n", "'10.0.0.300' is not a valid ipv4_addr value", 4),
    ("  ip daddr @nosuch drop\n", "set 'nosuch' is not declared", 4),
    ("  jump nowhere\n", "jump to chain 'nowhere'", 4),
    ("  ip daddr\n", "a match without a value", 4),
])
def test_malformed_nft_rule(body: str, expected: str, line: int) -> None:
    rules = "table ip t {\n chain fwd {\n  type filter hook forward priority 0; policy accept;\n" + body + " }\n}\n"
    msg = error_of(rules, dst="10.0.0.2")
    assert expected in msg, msg
    assert msg.startswith(f"line {line}:"), msg


def test_nft_unclosed_brace_and_unknown_format() -> None:
    assert "not closed" in error_of("table ip t {\n chain fwd {\n  type filter hook forward priority 0;\n")
    assert "cannot tell the ruleset format" in error_of("hello world\n")


def test_nft_json_errors_name_the_entry() -> None:
    assert "not valid JSON" in error_of('{"nftables": [')
    doc = {"nftables": [{"table": {"family": "ip", "name": "t"}},
                        {"chain": {"family": "ip", "table": "t", "name": "c", "type": "filter", "hook": "forward",
                                   "prio": 0, "policy": "accept"}},
                        {"rule": {"family": "ip", "table": "t", "chain": "c", "handle": 7,
                                  "expr": [{"match": {"op": "==", "left": {"osf": {"key": "name"}}, "right": "x"}}]}}]}
    msg = error_of(json.dumps(doc), dst="10.0.0.2")
    assert msg.startswith("entry 3 (chain c, handle 7):") and "unknown match" in msg


def test_bad_packet() -> None:
    rules = "*filter\nCOMMIT\n"
    with pytest.raises(TraceError, match="not an IP address"):
        trace_packet(rules, "10.0.0.1", "nope", 80)
    with pytest.raises(TraceError, match="different IP families"):
        trace_packet(rules, "10.0.0.1", "fd00::1", 80)
    with pytest.raises(TraceError, match="choose TCP, UDP or SCTP"):
        trace_packet(rules, "10.0.0.1", "10.0.0.2", 80, "ICMP")


@pytest.mark.timeout(20)
def test_exponential_branching_is_stopped() -> None:
    lines = "\n".join(f"-A FORWARD -m statistic --mode random --probability 0.5 -j MARK --xor-mark {1 << i:#x}"
                      for i in range(20))
    msg = error_of(ipt(filter=lines), dst="10.0.0.2")
    assert "branches" in msg and msg.startswith("line ")
