"""The same kube-proxy flows, traced through what the kernel actually holds.

For every case and mode the rendered ruleset is loaded for real (iptables-restore / nft -f) into
a network namespace this module creates and always removes, read back (iptables-save /
`nft list ruleset`) and every flow is traced again from that dump with `svcproxy trace --rules`.
This catches rules the kernel stores differently from how svcproxy wrote them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from svcproxy.cli import main
from svcproxy.lab.netns import scratch_namespace

from .runner import mismatch
from .scenarios import Case, load_cases, render_args

CASES = [(case, mode) for case in load_cases() for mode in case.modes]


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    """One namespace (prefix "cnf") reloaded for each case; removed whatever happens."""
    with scratch_namespace("cnf-rb") as name:
        yield name


def _run(ns: str, *cmd: str, stdin: str | None = None) -> str:
    p = subprocess.run(["ip", "netns", "exec", ns, *cmd], input=stdin, capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(cmd)}: {p.stderr}"
    return p.stdout


def _flag_values(case: Case, flag: str) -> list[str]:
    flags = list(case.flags)
    return [flags[i + 1] for i, f in enumerate(flags[:-1]) if f == flag]


def load_and_dump(ns: str, case: Case, mode: str) -> str:
    r = CliRunner().invoke(main, render_args(case, mode))
    assert r.exit_code == 0, r.stderr or r.output
    if mode == "nftables":
        _run(ns, "nft", "flush", "ruleset")
        _run(ns, "nft", "-f", "-", stdin=r.stdout)
        return _run(ns, "nft", "list", "ruleset")
    v6 = "IPv6" in _flag_values(case, "--ip-family") or any(":" in ip for ip in _flag_values(case, "--node-ip")[:1])
    restore, save = ("ip6tables-restore", "ip6tables-save") if v6 else ("iptables-restore", "iptables-save")
    _run(ns, restore, stdin=r.stdout)  # replaces every table it names
    return _run(ns, save)


@pytest.mark.kernel
@pytest.mark.parametrize(("case", "mode"), [pytest.param(c, m, id=f"{c.id}/{m}") for c, m in CASES])
def test_flows_through_the_kernels_copy(netns: str, tmp_path: Path, case: Case, mode: str) -> None:
    dump = tmp_path / "rules"
    dump.write_text(load_and_dump(netns, case, mode))
    local = [x for ip in [*_flag_values(case, "--node-ip"), *_flag_values(case, "--local-address")]
             for x in ("--local-address", ip)]
    problems = []
    for flow in case.flows:
        if flow.mode != mode:
            continue
        r = CliRunner().invoke(main, ["trace", "--rules", str(dump), *local, "--source", flow.source,
                                      "--destination", flow.destination, "--port", str(flow.port),
                                      "--protocol", flow.protocol, "--output", "json"])
        assert r.exit_code == 0, f"trace --rules {case.id} ({mode}): {r.stderr or r.output}"
        problem = mismatch(flow, json.loads(r.stdout))
        if problem and not flow.finding:
            problems.append(problem)
        elif not problem and flow.finding:
            problems.append(f"{flow.id}: agrees with kube-proxy now; drop it from known_findings.yaml ({flow.finding})")
    assert not problems, "\n\n".join(problems)
