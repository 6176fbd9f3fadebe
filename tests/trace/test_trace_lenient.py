"""iptables rules as people print them: unquoted multi-word comments, and no `*table` lines."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from trace_helpers import DATA, NODE, summary, trace

from svcproxy.cli import main
from svcproxy.netfilter import TraceError, trace_packet

KP = (DATA / "kube-proxy.iptables").read_text()
NAT = KP[KP.index("*nat"):KP.index("COMMIT", KP.index("*nat")) + len("COMMIT")] + "\n"
FLOWS = [("10.0.0.2", "172.30.0.41", 80), (NODE, "172.30.0.44", 80), ("203.0.113.9", NODE, 3003),
         ("203.0.113.9", "192.168.99.33", 80)]


def as_in_a_blog(save: str) -> str:
    """The rules alone: no table, chain or COMMIT lines, comments unquoted."""
    rules = [ln for ln in save.splitlines() if ln.startswith("-A ")]
    return "\n".join(re.sub(r'--comment "([^"]*)"', r"--comment \1", ln) for ln in rules) + "\n"


def test_the_fixture_has_multi_word_comments() -> None:
    blog = as_in_a_blog(NAT)
    assert re.search(r"--comment (?:[^-\s]\S* ){2,}-[mj] ", blog) and '"' not in blog  # what the tests below rely on


@pytest.mark.parametrize("src,dst,port", FLOWS)
def test_headerless_unquoted_rules_trace_as_the_saved_table(src: str, dst: str, port: int) -> None:
    expected = summary(trace(NAT, src, dst, port))
    assert expected  # the flow is served by the nat table alone
    assert summary(trace(as_in_a_blog(NAT), src, dst, port)) == expected


def test_unquoted_comment_with_arrow_words_inside_a_table() -> None:
    text = ("*nat\n:KUBE-SVC-X - [0:0]\n:KUBE-SEP-A - [0:0]\n"
            "-A OUTPUT -m comment --comment kubernetes service portals -j KUBE-SVC-X\n"
            "-A KUBE-SVC-X -m comment --comment ns1/svc1:p80 -> 10.180.0.1:80 -d 172.30.0.41/32 -j KUBE-SEP-A\n"
            "-A KUBE-SEP-A -p tcp -m comment --comment ns1/svc1:p80 -m tcp -j DNAT --to-destination 10.180.0.1:80\n"
            "COMMIT\n")
    assert summary(trace(text, NODE, "172.30.0.41", 80)) == {("ACCEPT", "10.180.0.1:80", False): 1.0}
    # the -d after the comment words is a match, not a word: other destinations are not DNATed
    assert summary(trace(text, NODE, "172.30.0.99", 80)) == {("ACCEPT", "172.30.0.99:80", False): 1.0}


def test_headerless_filter_rules_are_told_from_their_names() -> None:
    text = ("-A FORWARD -m conntrack --ctstate NEW -m comment --comment kubernetes service portals -j KUBE-SERVICES\n"
            "-A KUBE-SERVICES -d 172.30.0.42/32 -p tcp -m comment --comment ns2/svc2:p80 has no endpoints "
            "-m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable\n")
    assert summary(trace(text, "10.0.0.2", "172.30.0.42", 80)) == {("REJECT", "172.30.0.42:80", False): 1.0}


def test_ambiguous_headerless_rules_ask_for_the_table() -> None:
    text = "-A KUBE-SERVICES -d 172.30.0.41/32 -p tcp -m tcp --dport 80 -j ACCEPT\n"
    with pytest.raises(TraceError, match="--table"):
        trace(text, "10.0.0.2", "172.30.0.41", 80)
    r = trace_packet(text, "10.0.0.2", "172.30.0.41", 80, local_addresses=(NODE,), table="nat")
    assert summary(r) == {("ACCEPT", "172.30.0.41:80", False): 1.0}


def test_a_rule_it_cannot_evaluate_is_named_with_its_line() -> None:
    text = as_in_a_blog(NAT) + "-A KUBE-SERVICES -m bpf --bytecode 1,6 0 0 0 -j ACCEPT\n"
    line = text.count("\n")
    with pytest.raises(TraceError, match=rf"line {line}: unknown match -m bpf"):
        trace(text, "10.0.0.2", "172.30.0.99", 80)  # a destination that walks all of KUBE-SERVICES


def test_cli_table_option(tmp_path) -> None:
    rules = tmp_path / "rules.txt"
    rules.write_text("-A KUBE-SERVICES -d 172.30.0.41/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.1.2.3:8080\n"
                     "-A PREROUTING -j KUBE-SERVICES\n")
    args = ["trace", "--rules", str(rules), "--source", "10.0.0.2", "--destination", "172.30.0.41", "--port", "80"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0 and "10.1.2.3:8080" in out.output  # DNAT and PREROUTING say nat
    rules.write_text("-A KUBE-SERVICES -d 172.30.0.41/32 -j ACCEPT\n")
    out = CliRunner().invoke(main, args)
    assert out.exit_code != 0 and "--table" in out.output
    out = CliRunner().invoke(main, [*args, "--table", "filter"])
    assert out.exit_code == 0, out.output
