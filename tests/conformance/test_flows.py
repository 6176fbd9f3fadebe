"""kube-proxy's expected packet flows through `svcproxy trace -f ... --output json`, both modes.

One test per (scenario, case, flow, proxy mode): the manifests are rendered with the case's flags
and the packet traced, in-process through the CLI, exactly as a user would run it. The verdict,
the set of endpoints and the masquerade flag must be what kube-proxy's own tests expect.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from svcproxy.cli import main

from .scenarios import Case, Flow, load_cases, trace_args

CASES = load_cases()


def _params() -> list:
    out = []
    for case in CASES:
        for flow in case.flows:
            marks = [pytest.mark.xfail(strict=True, reason=flow.finding)] if flow.finding else []
            out.append(pytest.param(case, flow, id=flow.id, marks=marks))
    return out


def trace(case: Case, flow: Flow) -> dict:
    args = trace_args(case, flow)
    r = CliRunner().invoke(main, args)
    cmd = "svcproxy " + " ".join(args)
    assert r.exit_code == 0, f"{cmd}\nexit {r.exit_code}: {r.stderr or r.output}"
    assert "error:" not in r.stderr, f"{cmd}\nmanifest errors:\n{r.stderr}"
    return json.loads(r.stdout)


@pytest.mark.parametrize(("case", "flow"), _params())
def test_flow(case: Case, flow: Flow) -> None:
    want = flow.expected()
    got = trace(case, flow)
    verdicts = sorted({o["verdict"] for o in got["outcomes"]})
    summary = (f"{flow.protocol} {flow.source} -> {flow.destination}:{flow.port} ({flow.mode}): kube-proxy expects "
               f"{flow.output or '(unchanged)'!r} masq={flow.masq}; svcproxy says verdict={got['verdict']} "
               f"outcomes={verdicts} endpoints={got['endpoints']} masquerade={got['masquerade']}\n"
               + "\n".join(got["path"]))
    assert verdicts == [want.verdict], summary
    assert tuple(got["endpoints"]) == want.endpoints, summary
    assert got["masquerade"] is want.masquerade, summary


def test_every_scenario_has_flows_in_both_modes() -> None:
    """The data files are read as meant: no scenario silently loses its flows or a mode."""
    by_scenario: dict[str, set[str]] = {}
    for case in CASES:
        for flow in case.flows:
            by_scenario.setdefault(case.scenario, set()).add(flow.mode)
    assert by_scenario, "no scenario files found"
    for name, modes in by_scenario.items():
        assert modes, name
    assert {m for ms in by_scenario.values() for m in ms} == {"iptables", "nftables"}
