"""Assertions shared by the end-to-end modules: what the traffic did, and whether the tracer agrees."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from svcproxy.lab import Lab, LabError, Probe
from svcproxy.lab.tracing import trace_live


def served(probes: Sequence[Probe]) -> set[str]:
    failures = [p.error for p in probes if not p.ok]
    assert not failures, f"some connections failed: {failures}"
    return {p.served_by for p in probes}


def sources(probes: Sequence[Probe]) -> set[str]:
    return {p.source_ip for p in probes if p.ok}


def errors(probes: Sequence[Probe]) -> list[str]:
    return [p.error if not p.ok else f"served by {p.served_by}" for p in probes]


def agree(lab: Lab, node: str, source: str, destination: str, port: int, probes: Sequence[Probe], *,
          protocol: str = "TCP", masquerade: bool | None = None, exact: bool = False) -> None:
    """The tracer, reading the node's live ruleset, must predict what the traffic did: the verdict
    (ACCEPT when pods answered; REJECT for refusals; DROP for timeouts), the pods that served
    among its endpoints (all of them when exact), and masquerading where given."""
    try:
        result = trace_live(lab, node, source, destination, port, protocol)
    except LabError as e:  # the tracer is another engineer's module: say so, loudly
        if "packet tracer" not in str(e):
            raise
        pytest.xfail(str(e))
    ok = [p for p in probes if p.ok]
    traced = {ep.rpartition(":")[0].strip("[]") for ep in result.endpoints}
    if ok:
        assert result.verdict == "ACCEPT", result
        got = {p.pod_ip for p in ok}
        assert got == traced if exact else got <= traced, (got, result.endpoints)
    elif all(p.error == "refused" for p in probes):
        assert result.verdict == "REJECT", result
    else:
        assert result.verdict == "DROP", result
    if masquerade is not None:
        assert result.masquerade == masquerade, result
