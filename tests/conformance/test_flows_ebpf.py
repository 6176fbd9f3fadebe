"""kube-proxy's expected packet flows in ebpf mode, through `svcproxy trace --proxy-mode ebpf`.

ebpf mode programs the nftables maps layout for packets from elsewhere, and balances this
node's own sockets at connect(). So every flow is traced again in ebpf mode:
- a flow whose source is not a socket on this node must be exactly what kube-proxy expects
  (the maps layout's rules, which tests/conformance/test_flows.py checks too);
- a flow from a socket on this node must reach exactly the endpoints kube-proxy expects, with
  the expected verdict, and never masqueraded: the packet leaves addressed to the pod, so
  nothing is NATed for the Service's sake (the one difference, by design).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from .runner import mismatch, trace
from .scenarios import MAPS, Case, Flow, load_cases

CASES = load_cases()
SOCKET_STEP = "connect() (BPF)"


def _params() -> list:
    out = []
    for case in CASES:
        for flow in case.flows:
            if flow.mode != MAPS:
                continue
            marks = [pytest.mark.xfail(strict=False, reason=flow.finding)] if flow.finding else []
            out.append(pytest.param(case, replace(flow, mode="ebpf"), id=replace(flow, mode="ebpf").id, marks=marks))
    return out


def ebpf_mismatch(flow: Flow, got: dict) -> str | None:
    if not got["path"] or got["path"][0] != SOCKET_STEP:
        return mismatch(flow, got)
    want = flow.expected()
    verdicts = sorted({o["verdict"] for o in got["outcomes"]})
    if verdicts == [want.verdict] and tuple(got["endpoints"]) == want.endpoints and got["masquerade"] is False:
        return None
    return (f"{flow.protocol} {flow.source} -> {flow.destination}:{flow.port} (ebpf, balanced at connect()): "
            f"kube-proxy expects {flow.output or '(unchanged)'!r}; svcproxy says verdict={got['verdict']} "
            f"endpoints={got['endpoints']} masquerade={got['masquerade']}\n" + "\n".join(got["path"]))


@pytest.mark.parametrize(("case", "flow"), _params())
def test_flow_in_ebpf_mode(case: Case, flow: Flow) -> None:
    problem = ebpf_mismatch(flow, trace(case, flow))
    assert problem is None, problem


def test_both_kinds_of_flow_are_checked() -> None:
    """Some flows start at a socket on the node (balanced at connect()), others do not."""
    kinds = set()
    for case, flow in ((p.values[0], p.values[1]) for p in _params()[:400]):
        kinds.add(trace(case, flow)["path"][0] == SOCKET_STEP)
    assert kinds == {True, False}
