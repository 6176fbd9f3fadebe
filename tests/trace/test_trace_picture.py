"""The SVG picture: the five hooks as the frame, the chains passed, branch shares, outcomes."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from trace_helpers import DATA, NODE, ipt, trace

from svcproxy.netfilter import render_svg

KP = (DATA / "kube-proxy.iptables").read_text()


def texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)  # well-formed XML
    return ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_frame_lanes_branches_and_outcomes() -> None:
    svg = render_svg(trace(KP, "10.0.0.2", "172.30.0.44", 80))
    words = texts(svg)
    for hook in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"):
        assert hook in words  # the fixed frame
    assert "1. PREROUTING" in words and "2. FORWARD" in words and "3. POSTROUTING" in words
    assert "KUBE-SVC-4SW47YFZTEDKD3PK" in words
    assert any("p=0.5 → KUBE-SEP-UKSFD7AGPMPPLUHC" in w for w in words)  # the branch and where it goes
    assert words.count("50%") >= 4  # each branch's share of the traffic
    assert any(w.startswith("ACCEPT") and "10.180.0.4:80" in w for w in words)
    assert "50.0%" in words


def test_unvisited_hooks_are_grey_and_loopback_is_drawn() -> None:
    rules = ipt(nat="-A OUTPUT -d 172.30.0.1 -j DNAT --to-destination 192.168.0.2:8080")
    svg = render_svg(trace(rules, NODE, "172.30.0.1", 80))
    words = texts(svg)
    assert "loopback (destination is this node)" in words
    assert [w for w in words if re.fullmatch(r"\d\. [A-Z]+", w)] == \
        ["1. OUTPUT", "2. POSTROUTING", "3. PREROUTING", "4. INPUT"]
    assert "FORWARD" in words and "#9ca3af" in svg  # FORWARD is in the frame, greyed out


def test_drop_outcome_and_sticky() -> None:
    svg = render_svg(trace(KP, "203.0.113.200", "5.6.7.8", 80))
    assert any(w.startswith("DROP") and "5.6.7.8:80" in w for w in texts(svg))
    svg = render_svg(trace(KP, "10.0.0.2", "172.30.0.45", 80))
    assert any("sticky (session affinity)" in w for w in texts(svg))
