"""`python -m bench.reliability.report RESULTS.json... [CHART.svg]`: the tables of
docs/reliability.md from the JSON that `python -m bench.reliability --out` wrote, and the soak's
memory chart."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _ms(s: dict, key: str = "max_ms") -> str:
    return f"{s[key]:.0f} ms" if s else "-"


def _rewritten(chains: list[str]) -> str:
    per_service = [c for c in chains if c.startswith(("service-", "endpoint-", "external-"))]
    fixed = len(chains) - len(per_service)
    return f"{fixed} fixed, {len(per_service)} per-service" if chains else "none"


def tables(results: list[dict]) -> str:
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["scenario"], []).append(r)
    out = []
    if rows := by.get("rolling"):
        out += ["| mode | rolling updates (applies) | connections + queries | failed | UDP datagrams lost, asked again | "
                "manifest to every node's rules: median / p95 / worst |", "|---|---|---|---|---|---|"]
        out += [f"| {r['mode']} | {r['rollouts']} ({r['applies']}) | {r['attempts']:,} | {r['failures']} | "
                f"{r.get('udp_lost', 0)} | {_ms(r['manifest_to_every_node'], 'median_ms')} / "
                f"{_ms(r['manifest_to_every_node'], 'p95_ms')} / {_ms(r['manifest_to_every_node'])} |" for r in rows]
        out.append("")
    if rows := by.get("kill9"):
        out += ["| mode | kill -9 + restart | connections + queries | failed | UDP lost | restart to synced: median / worst "
                "| rules changed | chains rewritten in place |", "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['mode']} | {r['kills']} | {r['attempts']:,} | {r['failures']} | {r.get('udp_lost', 0)} | "
                f"{_ms(r['restart_to_synced'], 'median_ms')} / {_ms(r['restart_to_synced'])} | "
                f"{len(r['rules_changed'])} | {_rewritten(r['chains_rewritten_in_place'])} |" for r in rows]
        out.append("")
    if rows := by.get("api"):
        out += ["| mode | outage | change made in the outage landed, after the API is back | 410 relist: change landed "
                "| watch drops: change landed, median / worst | connections + queries | failed | UDP lost |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['mode']} | {r['outage_s']:.0f} s | {r['outage_change_landed_after_back_s']:.2f} s | "
                f"{r['relist_change_landed_s']:.2f} s | {r['drops']} drops: {_ms(r['change_after_drop'], 'median_ms')} / "
                f"{_ms(r['change_after_drop'])} | {r['attempts']:,} | {r['failures']} | {r.get('udp_lost', 0)} |"
                for r in rows]
        out.append("")
    if rows := by.get("badinput"):
        for r in rows:
            out.append(f"- {r['examples']:,} generated examples in {r['seconds']} s: victim programmed as odd-but-valid "
                       f"{r['programmed']}, refused and named {r['named']}, programmed with a warning naming it "
                       f"{r['both']}; {r['kernel_loaded']} of the rendered ruleset pairs loaded into a kernel; "
                       f"findings {r['findings']}.")
    if rows := by.get("badinput-daemon"):
        out += ["", "| mode | generated objects through `svcproxy run` | syncs | errors logged | tracebacks | "
                "good Service: connections / failed |", "|---|---|---|---|---|---|"]
        out += [f"| {r['mode']} | {r['objects']:,} in {r['batches']} files | {r['syncs']} | {r['errors_logged']:,} | "
                f"{r['tracebacks']} | {r['attempts']:,} / {r['failures']} |" for r in rows]
        out.append("")
    if rows := by.get("foreign"):
        out += ["| mode | compared | differences | ours left after cleanup |", "|---|---|---|---|"]
        out += [f"| {r['mode']} | {'; '.join(r['checked'])} | {len(r['differences'])} | {len(r['ours_left_after_cleanup'])} |"
                for r in rows]
        out.append("")
    if rows := by.get("soak"):
        out += ["| mode | soak | changes | syncs | RSS after warm-up -> end (max) | growth | connections / failed |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {r['mode']} | {r['seconds'] / 60:.0f} min | {r['changes']:,} | {r['syncs']:,} | "
                f"{r['rss_start_mib']} -> {r['rss_end_mib']} MiB ({r['rss_max_mib']}) | {r['rss_growth_pct']:+.2f}% | "
                f"{r['attempts']:,} / {r['failures']} |" for r in rows]
    return "\n".join(out)


COLOURS = {"iptables": "#1f77b4", "nftables": "#d62728", "nftables-maps": "#2ca02c", "userspace": "#9467bd"}


def soak_svg(results: list[dict], width: int = 680, height: int = 260) -> str:
    """RSS over the soak, one line per mode: whether memory levels off is seen, not read."""
    rows = [r for r in results if r["scenario"] == "soak"]
    if not rows:
        return ""
    pad_l, pad_b, pad_t, pad_r = 48, 30, 24, 160
    t_max = max(t for r in rows for t, _ in r["samples"]) or 1
    lo = min(k for r in rows for _, k in r["samples"]) / 1024
    hi = max(k for r in rows for _, k in r["samples"]) / 1024
    lo, hi = (lo // 5) * 5, (hi // 5 + 1) * 5

    def x(t: float) -> float:
        return pad_l + (width - pad_l - pad_r) * t / t_max

    def y(mib: float) -> float:
        return height - pad_b - (height - pad_b - pad_t) * (mib - lo) / (hi - lo)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<text x="{pad_l}" y="14">svcproxy run RSS (MiB) over the soak; one change every 0.25 s</text>']
    for mib in range(int(lo), int(hi) + 1, 5):
        parts.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{y(mib):.1f}" y2="{y(mib):.1f}" stroke="#ddd"/>'
                     f'<text x="{pad_l - 6}" y="{y(mib) + 4:.1f}" text-anchor="end">{mib}</text>')
    for minute in range(0, int(t_max // 60) + 1, 5):
        parts.append(f'<text x="{x(minute * 60):.1f}" y="{height - 10}" text-anchor="middle">{minute} min</text>')
    for i, r in enumerate(rows):
        pts = " ".join(f"{x(t):.1f},{y(k / 1024):.1f}" for t, k in r["samples"])
        colour = COLOURS.get(r["mode"], "#333")
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>')
        parts.append(f'<text x="{width - pad_r + 8}" y="{pad_t + 16 * i + 10}" fill="{colour}">{r["mode"]} '
                     f'{r["rss_growth_pct"]:+.1f}%</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    results = [r for p in sys.argv[1:] if not p.endswith(".svg") for r in json.loads(Path(p).read_text())]
    print(tables(results))
    for p in sys.argv[1:]:
        if p.endswith(".svg"):
            Path(p).write_text(soak_svg(results))
