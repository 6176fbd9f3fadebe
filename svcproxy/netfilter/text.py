"""The trace in words: the path (shared steps once, then each branch), the outcomes, warnings."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .core import PathStep
from .result import Outcome, TraceResult

VERDICT_STYLE = {"ACCEPT": "green", "DROP": "red", "REJECT": "dark_orange"}


def _line(step: PathStep, indent: int) -> Text:
    pad = "  " * indent
    if step.kind == "hook":
        return Text(f"{pad}{step.hook}", style="bold cyan")
    if step.kind == "route":
        return Text(f"{pad}  ⤷ routing: {step.note}", style="magenta")
    if step.kind == "chain":
        back = Text(" (back)", style="dim") if step.note == "back" else Text("")
        return Text(f"{pad}  {step.table} / ", style="dim") + Text(step.chain, style="bold") + back
    t = Text(f"{pad}    {step.where:>9}  ", style="dim")
    style = "yellow" if step.probability < 1.0 else ""
    for word, st in VERDICT_STYLE.items():
        if step.note.startswith(word) or step.note.startswith("policy " + word):
            style = st
    if step.note.startswith(("DNAT", "SNAT", "MASQUERADE")):
        style = "bold blue"
    return t + Text(step.note, style=style)


def _segment(out: list[Text], outcomes: list[Outcome], start: int, indent: int) -> None:
    """Print the steps these outcomes share from `start`, then each diverging branch, nested."""
    paths = [o.path for o in outcomes]
    i = start
    while all(len(p) > i for p in paths) and len({p[i].describe() for p in paths}) == 1:
        out.append(_line(paths[0][i], indent))
        i += 1
    if len(outcomes) == 1:
        o = outcomes[0]
        out.extend(_line(s, indent) for s in o.path[i:])
        tail = Text("  " * indent + "  ⇒ ", style="bold")
        tail += Text(o.verdict, style=VERDICT_STYLE[o.verdict]) + Text(f" {o.endpoint}")
        tail += Text(" (masqueraded)" if o.masquerade else "") + Text(f"   p={o.probability:.4g}", style="yellow")
        out.append(tail)
        return
    groups: dict[str, list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault(o.path[i].describe() if len(o.path) > i else "", []).append(o)
    for group in groups.values():
        p = sum(o.probability for o in group)
        out.append(Text("  " * indent + f"  ├─ branch (p={p:.4g})", style="yellow"))
        _segment(out, group, i, indent + 1)


def render_text(result: TraceResult, color: bool = False, width: int = 120) -> str:
    buf = io.StringIO()
    con = Console(file=buf, width=width, force_terminal=color, color_system="standard" if color else None,
                  highlight=False, soft_wrap=True)
    where = "from this node: starts at OUTPUT" if result.start == "OUTPUT" else \
        "from elsewhere: starts at PREROUTING"
    con.print(Text(f"{result.protocol} {result.source} -> {result.destination}:{result.port}", style="bold")
              + Text(f"  ({where}; {result.ruleset_format} ruleset)", style="dim"))
    con.print()
    lines: list[Text] = []
    _segment(lines, result.outcomes, 0, 0)
    for t in lines:
        con.print(t)
    con.print()
    table = Table(title="Outcomes", title_justify="left", show_lines=False)
    table.add_column("probability", justify="right")
    table.add_column("verdict")
    table.add_column("endpoint")
    table.add_column("masquerade")
    for o in result.outcomes:
        table.add_row(f"{o.probability:.4f}", Text(o.verdict, style=VERDICT_STYLE[o.verdict]), o.endpoint,
                      "yes" if o.masquerade else "no")
    con.print(table)
    summary = f"verdict {result.verdict}; endpoints {', '.join(result.endpoints) or '(none)'}; " \
              f"masquerade {'yes' if result.masquerade else 'no'}"
    con.print(Text(summary, style="bold"))
    for a in result.affinity:
        con.print(Text(f"session affinity ({a.name}): the choice is sticky; a returning client goes to "
                       f"{', '.join(a.endpoints) or '(nowhere)'}", style="yellow"))
    if result.warnings:
        con.print()
        con.print(Text("Rules the tracer could not fully evaluate:", style="bold red"))
        for w in result.warnings:
            con.print(Text(f"  warning: {w}", style="red"))
    return buf.getvalue()
