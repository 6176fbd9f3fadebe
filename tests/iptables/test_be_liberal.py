"""kube-proxy writes no INVALID drop rule when nf_conntrack_tcp_be_liberal=1: rendering takes
it as an input (NodeConfig.conntrack_tcp_be_liberal), the dataplane reads it from the kernel."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from svcproxy.dataplane.iptables import IptablesDataplane
from svcproxy.dataplane.iptables.render import render_ruleset

from .conftest import NODE, saved, sh, state_from
from .test_apply import WEB

INVALID = "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"


def test_render_drops_invalid_unless_be_liberal() -> None:
    state = state_from(WEB)
    assert INVALID in render_ruleset(state, NODE)
    liberal = render_ruleset(state, dataclasses.replace(NODE, conntrack_tcp_be_liberal=True))
    assert INVALID not in liberal
    assert "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\"" in liberal


def _be_liberal(ns: str, value: int) -> None:
    sh(ns, "sysctl", "-q", "-w", f"net.netfilter.nf_conntrack_tcp_be_liberal={value}")


@pytest.mark.kernel
@pytest.mark.parametrize("value", [0, 1])
def test_dataplane_reads_the_namespace_sysctl(netns: str, value: int) -> None:
    if "be_liberal" not in sh(netns, "sysctl", "-a", "-N", "-r", "be_liberal", check=False):
        pytest.skip("nf_conntrack is not loaded")
    _be_liberal(netns, value)
    IptablesDataplane(NODE, netns=netns).sync(state_from(WEB))
    rules = saved(netns, "filter")
    assert "KUBE-FORWARD" in rules
    assert (INVALID in rules) == (value == 0)
    # the daemon's own namespace (no netns argument): read from /proc there
    code = "from svcproxy.dataplane.iptables.kernel import tcp_be_liberal; print(tcp_be_liberal())"
    assert sh(netns, sys.executable, "-c", code).strip() == str(bool(value))
