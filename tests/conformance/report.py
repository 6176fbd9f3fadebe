"""Print the conformance table for docs/conformance.md: every scenario, both modes.

    .venv/bin/python tests/conformance/report.py

Runs every flow (as test_flows.py does) and prints a Markdown table: per scenario, the flows
that agree with kube-proxy per proxy mode, and the known findings that account for the rest.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "conformance"  # noqa: A001 - lets the relative imports below work when run as a script

from .runner import mismatch, trace  # noqa: E402
from .scenarios import MODES, load_cases  # noqa: E402


def main() -> int:
    rows: dict[str, dict] = {}
    unexpected = []
    for case in load_cases():
        row = rows.setdefault(case.scenario, {"upstream": case.upstream, "cases": 0,
                                              **{m: [0, 0] for m in MODES}, "findings": set()})
        row["cases"] += 1
        for flow in case.flows:
            try:
                ok = mismatch(flow, trace(case, flow)) is None
            except AssertionError:  # the command failed or reported bad manifests
                ok = False
            row[flow.mode][0] += ok
            row[flow.mode][1] += 1
            if not ok and flow.finding:
                row["findings"].add(flow.finding.split(":")[0])
            elif not ok:
                unexpected.append(flow.id)
    print("| scenario | kube-proxy tests | cases | iptables | nftables | findings |")
    print("|---|---|---|---|---|---|")
    total = {m: [0, 0] for m in MODES}
    for name, row in rows.items():
        cells = []
        for m in MODES:
            ok, n = row[m]
            total[m][0] += ok
            total[m][1] += n
            cells.append("–" if n == 0 else f"{'✓' if ok == n else '✗'} {ok}/{n}")
        upstream = ", ".join(row["upstream"]) or "(derived)"
        print(f"| {name} | {upstream} | {row['cases']} | {cells[0]} | {cells[1]} | {', '.join(sorted(row['findings']))} |")
    print(f"| **total** | | | {total['iptables'][0]}/{total['iptables'][1]} | {total['nftables'][0]}/{total['nftables'][1]} | |")
    if unexpected:
        print("\nflows failing without a known finding:\n" + "\n".join(unexpected), file=sys.stderr)
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
