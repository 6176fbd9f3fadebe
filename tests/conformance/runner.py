"""Run one kube-proxy flow through `svcproxy trace` (in-process, via the CLI) and compare."""

from __future__ import annotations

import json

from click.testing import CliRunner

from svcproxy.cli import main

from .scenarios import Case, Flow, trace_args


def trace(case: Case, flow: Flow) -> dict:
    """svcproxy trace's JSON for the flow; AssertionError if the command itself fails."""
    args = trace_args(case, flow)
    r = CliRunner().invoke(main, args)
    cmd = "svcproxy " + " ".join(args)
    assert r.exit_code == 0, f"{cmd}\nexit {r.exit_code}: {r.stderr or r.output}"
    assert "error:" not in r.stderr, f"{cmd}\nmanifest errors:\n{r.stderr}"
    return json.loads(r.stdout)


def mismatch(flow: Flow, got: dict) -> str | None:
    """Why svcproxy's answer differs from kube-proxy's expectation, or None when it agrees.

    Every outcome must carry the expected verdict (kube-proxy's tracer has no partial
    drops), the accepted endpoints must be exactly the expected set, and the masquerade
    flag must match.
    """
    want = flow.expected()
    verdicts = sorted({o["verdict"] for o in got["outcomes"]})
    if verdicts == [want.verdict] and tuple(got["endpoints"]) == want.endpoints and got["masquerade"] is want.masquerade:
        return None
    return (f"{flow.protocol} {flow.source} -> {flow.destination}:{flow.port} ({flow.mode}): kube-proxy expects "
            f"{flow.output or '(unchanged)'!r} masq={flow.masq}; svcproxy says verdict={got['verdict']} "
            f"outcomes={verdicts} endpoints={got['endpoints']} masquerade={got['masquerade']}\n"
            + "\n".join(got["path"]))
