"""How `lab curl` shows its answers: who served, which source they saw, as a table and bars."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .lab import Probe

BAR_WIDTH = 40


@dataclass(frozen=True)
class Row:
    label: str  # pod name, or the failure ("refused", "timeout")
    pod_ip: str
    count: int
    sources: tuple[str, ...]  # distinct source IPs the pod saw


def summarize(probes: Sequence[Probe]) -> list[Row]:
    """One row per pod that served (most first), then one per kind of failure."""
    served = Counter(p.served_by for p in probes if p.ok)
    ips = {p.served_by: p.pod_ip for p in probes if p.ok}
    sources: dict[str, dict[str, None]] = {}
    for p in probes:
        if p.ok:
            sources.setdefault(p.served_by, {})[p.source_ip] = None
    rows = [Row(name, ips[name], n, tuple(sources[name])) for name, n in
            sorted(served.items(), key=lambda kv: (-kv[1], kv[0]))]
    failed = Counter(p.error for p in probes if not p.ok)
    rows += [Row(err, "", n, ()) for err, n in sorted(failed.items())]
    return rows


def show(console: Console, title: str, probes: Sequence[Probe], client_ip: str = "") -> None:
    rows = summarize(probes)
    total = max(len(probes), 1)
    table = Table(title=title, title_justify="left")
    table.add_column("served by")
    table.add_column("pod IP")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    table.add_column("source seen by the pod")
    for r in rows:
        kept = [f"{s} (client address)" if s == client_ip else f"{s} (masqueraded)" if client_ip else s
                for s in r.sources]
        style = "" if r.pod_ip else "red"
        table.add_row(r.label, r.pod_ip or "-", str(r.count), f"{100 * r.count / total:.0f}%",
                      ", ".join(kept) or "-", style=style)
    console.print(table)
    width = max((len(r.label) for r in rows), default=0)
    for r in rows:
        bar = "█" * max(1, round(BAR_WIDTH * r.count / total)) if r.count else ""
        line = Text(f"{r.label:<{width}} ")
        line.append(bar, style="green" if r.pod_ip else "red")
        line.append(f" {r.count}")
        console.print(line)
    ms = sorted(p.ms for p in probes)
    if ms:
        console.print(f"[dim]{len(probes)} attempt(s); time per attempt: median {ms[len(ms) // 2]:.1f} ms, "
                      f"max {ms[-1]:.1f} ms[/dim]")
