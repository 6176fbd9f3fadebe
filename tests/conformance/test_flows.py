"""kube-proxy's expected packet flows through `svcproxy trace -f ... --output json`, both modes.

One test per (scenario, case, flow, proxy mode): the manifests are rendered with the case's flags
and the packet traced, in-process through the CLI, exactly as a user would run it. The verdict,
the set of endpoints and the masquerade flag must be what kube-proxy's own tests expect.
"""

from __future__ import annotations

import pytest

from .runner import mismatch, trace
from .scenarios import Case, Expected, Finding, Flow, expectation, load_cases

CASES = load_cases()


def _params() -> list:
    out = []
    for case in CASES:
        for flow in case.flows:
            marks = [pytest.mark.xfail(strict=True, reason=flow.finding)] if flow.finding else []
            out.append(pytest.param(case, flow, id=flow.id, marks=marks))
    return out


@pytest.mark.parametrize(("case", "flow"), _params())
def test_flow(case: Case, flow: Flow) -> None:
    problem = mismatch(flow, trace(case, flow))
    assert problem is None, problem


def test_every_scenario_has_flows_in_both_modes() -> None:
    """The data files are read as meant: flows exist, and both proxy modes are exercised."""
    modes = {flow.mode for case in CASES for flow in case.flows}
    assert modes == {"iptables", "nftables", "nftables-maps"}
    assert all(case.flows for case in CASES), [case.id for case in CASES if not case.flows]


def test_expectation_mapping() -> None:
    """kube-proxy's output strings map onto svcproxy's verdict / endpoints / masquerade."""
    assert expectation("", "172.30.0.41", 80, False) == Expected("ACCEPT", ("172.30.0.41:80",), False, False)
    assert expectation("ACCEPT", "192.168.0.2", 30000, False).endpoints == ("192.168.0.2:30000",)
    assert expectation("REJECT", "172.30.0.41", 80, False) == Expected("REJECT", (), False, False)
    two = expectation("10.180.2.1:80, 10.180.0.1:80", "172.30.0.41", 80, True)
    assert two == Expected("ACCEPT", ("10.180.0.1:80", "10.180.2.1:80"), True, True)
    assert expectation("[fd00::1]:80", "fd00:172:30::41", 80, False).endpoints == ("[fd00::1]:80",)
    with pytest.raises(ValueError):
        expectation("10.0.0.300:80", "172.30.0.41", 80, False)


def test_a_wrong_answer_is_reported() -> None:
    """The comparison can fail: a flow whose expectation is deliberately wrong is caught."""
    case = next(c for c in CASES if c.id == "cluster_ip_general/general")
    flow = next(f for f in case.flows if f.name == "simple clusterIP" and f.mode == "iptables")
    assert mismatch(flow, trace(case, flow)) is None
    wrong = Flow(**{**flow.__dict__, "output": "10.180.0.9:80"})
    assert "kube-proxy expects '10.180.0.9:80'" in (mismatch(wrong, trace(case, wrong)) or "")


def test_known_findings_select_flows_by_pattern_and_mode() -> None:
    """A known_findings.yaml entry marks exactly the flows (and modes) it names."""
    flow = next(f for c in CASES for f in c.flows if c.scenario == "bad_ips" and f.mode == "nftables")
    assert Finding("bad_ips/leading zeros/*", ("nftables",), "F3").covers(flow)
    assert not Finding("bad_ips/leading zeros/*", ("iptables",), "F3").covers(flow)
    assert not Finding("bad_ips/other case/*", ("nftables",), "F3").covers(flow)
