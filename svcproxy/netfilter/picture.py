"""The trace as a picture (SVG, written by hand): the packet's way through netfilter.

Top: the five hooks as the fixed frame (the classic diagram: PREROUTING -> routing -> INPUT or
FORWARD -> POSTROUTING, and OUTPUT from local processes), hooks the packet passes highlighted
and numbered in order. Middle: one lane per hook passed, with the chains traversed there and
what happened in them: the branch taken at each statistic/numgen rule with its probability,
marks, DNAT, verdicts. Bottom: every outcome with its probability as a bar.
"""

from __future__ import annotations

from html import escape

from .core import PathStep
from .result import TraceResult

FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"
COLORS = {"ACCEPT": "#15803d", "DROP": "#b91c1c", "REJECT": "#c2410c"}
HOOK_BOX = {  # x, y of each hook in the frame
    "PREROUTING": (40, 70), "FORWARD": (400, 70), "POSTROUTING": (640, 70),
    "INPUT": (260, 170), "OUTPUT": (520, 170),
}
HOOK_W, HOOK_H = 150, 36
LANE_W = 360
LINE_H = 16
MAX_ITEMS = 40


def _t(x: float, y: float, text: str, size: int = 12, weight: str = "normal", fill: str = "#111827",
       anchor: str = "start", mono: bool = False) -> str:
    return (f'<text x="{x:.0f}" y="{y:.0f}" font-family="{MONO if mono else FONT}" font-size="{size}" '
            f'font-weight="{weight}" fill="{fill}" text-anchor="{anchor}">{escape(text)}</text>')


def _fit(text: str, chars: int) -> str:
    if len(text) <= chars:
        return text
    keep = chars - 1
    return text[: keep // 2] + "…" + text[-(keep - keep // 2):]


def _arrow(x1: float, y1: float, x2: float, y2: float, on: bool) -> str:
    color = "#2563eb" if on else "#cbd5e1"
    return (f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="{color}" '
            f'stroke-width="{2.5 if on else 1.5}" marker-end="url(#{"on" if on else "off"})"/>')


def _frame(order: list[str], edges: set[tuple[str, str]]) -> list[str]:
    out = []
    rx, ry = 300, 88  # the routing decision
    cx = {h: (x + HOOK_W / 2, y + HOOK_H / 2) for h, (x, y) in HOOK_BOX.items()}

    def on(a: str, b: str) -> bool:
        return (a, b) in edges

    out.append(_t(4, 80, "in", 11, fill="#6b7280"))
    out.append(_arrow(20, 88, 40, 88, "PREROUTING" in order and order[0] == "PREROUTING"))
    out.append(_arrow(190, 88, rx - 28, ry, on("PREROUTING", "INPUT") or on("PREROUTING", "FORWARD")))
    out.append(f'<polygon points="{rx - 28},{ry} {rx},{ry - 18} {rx + 28},{ry} {rx},{ry + 18}" '
               'fill="#fef3c7" stroke="#d97706"/>')
    out.append(_t(rx, ry + 4, "route", 10, anchor="middle", fill="#92400e"))
    out.append(_arrow(rx + 28, ry, 400, 88, on("PREROUTING", "FORWARD")))
    out.append(_arrow(rx, ry + 18, cx["INPUT"][0], 170, on("PREROUTING", "INPUT") or on("POSTROUTING", "PREROUTING")))
    out.append(_arrow(550, 88, 640, 88, on("FORWARD", "POSTROUTING")))
    out.append(_arrow(790, 88, 820, 88, "POSTROUTING" in order))
    out.append(_t(826, 92, "out", 11, fill="#6b7280"))
    # local process between INPUT and OUTPUT
    out.append('<rect x="430" y="225" width="110" height="26" rx="13" fill="#f9fafb" stroke="#9ca3af"/>')
    out.append(_t(485, 242, "local process", 11, anchor="middle", fill="#374151"))
    out.append(_arrow(cx["INPUT"][0], 206, 430, 238, "INPUT" in order))
    out.append(_arrow(540, 238, cx["OUTPUT"][0], 206, "OUTPUT" in order))
    out.append(_arrow(cx["OUTPUT"][0] + 30, 170, cx["POSTROUTING"][0], 106, on("OUTPUT", "POSTROUTING")))
    if on("POSTROUTING", "PREROUTING"):  # back in through loopback
        out.append('<path d="M 715 106 C 715 300, 115 300, 115 106" fill="none" stroke="#2563eb" '
                   'stroke-width="2" stroke-dasharray="6 4" marker-end="url(#on)"/>')
        out.append(_t(415, 290, "loopback (destination is this node)", 11, anchor="middle", fill="#2563eb"))
    for h, (x, y) in HOOK_BOX.items():
        visited = h in order
        fill, stroke, ink = ("#dbeafe", "#2563eb", "#1e3a8a") if visited else ("#f3f4f6", "#d1d5db", "#9ca3af")
        out.append(f'<rect x="{x}" y="{y}" width="{HOOK_W}" height="{HOOK_H}" rx="6" fill="{fill}" '
                   f'stroke="{stroke}" stroke-width="{2 if visited else 1}"/>')
        out.append(_t(x + HOOK_W / 2, y + 23, h, 13, "bold", ink, "middle"))
        if visited:
            nums = ",".join(str(i + 1) for i, o in enumerate(order) if o == h)
            out.append(f'<circle cx="{x}" cy="{y}" r="10" fill="#2563eb"/>')
            out.append(_t(x, y + 4, nums, 10, "bold", "#ffffff", "middle"))
    return out


Item = list  # [text, color, share of traffic through it, rule line, order seen]
ChainBox = tuple[tuple[str, str], list[Item], object]  # (table, chain), its lines, the chain it came from
Lane = tuple[str, list[ChainBox]]


def _place(lane: list[ChainBox], name: tuple[str, str], parent: object) -> None:
    """Add a chain box after its parent's other callees (and theirs), so a lane reads as a walk."""
    parents = {c: p for c, _, p in lane}

    def under(c: object) -> bool:
        while c is not None:
            c = parents.get(c)  # type: ignore[arg-type]
            if c == parent:
                return True
        return False

    names = [c for c, _, _ in lane]
    if parent not in names:
        lane.append((name, [], parent))
        return
    pos = names.index(parent) + 1
    while pos < len(lane) and under(lane[pos][0]):
        pos += 1
    lane.insert(pos, (name, [], parent))


def _short(note: str) -> str:
    """A branch, briefly: 'p=0.25', '1 in 4', 'numgen 0/4'."""
    if note.startswith("statistic random p="):
        return note.split(":")[0].split(" ")[-1]
    if note.startswith("statistic nth every"):
        return "1 in " + note.split()[3]
    if note.startswith("numgen "):
        words = note.split()
        return f"numgen {words[1]}/{words[4]}" if len(words) > 4 else note
    return note


def _lanes(result: TraceResult) -> tuple[list[str], list[Lane]]:
    """Per hook visit (in order): chains in order, each with its notable lines and their share."""
    lanes: list[Lane] = []
    index: dict[str, int] = {}
    order: list[str] = []
    for o in sorted(result.outcomes, key=lambda o: -o.probability):
        visit = 0
        seen: set[tuple[int, str]] = set()
        lane: list[ChainBox] = []
        skip = -1
        current: tuple[str, str] | None = None
        for k, step in enumerate(o.path):
            if k == skip:
                continue
            if step.kind == "hook":
                key = f"{step.hook}#{visit}"
                visit += 1
                if key not in index:
                    index[key] = len(lanes)
                    lanes.append((step.hook, []))
                    order.append(step.hook)
                lane = lanes[index[key]][1]
                current = None
            elif step.kind == "chain":
                if step.note == "base":
                    current = None
                name = (step.table, step.chain)
                if step.note != "back" and all(c != name for c, _, _ in lane):
                    _place(lane, name, current)
                current = name
            elif step.kind in ("rule", "policy"):
                item = _item(step)
                if item is None:
                    continue
                nxt = o.path[k + 1] if k + 1 < len(o.path) else None
                if item[0].startswith("◆") and nxt is not None and nxt.kind == "rule" and \
                        nxt.where == step.where and nxt.note.startswith(("jump", "goto")):
                    target = nxt.note.split(" ", 1)[-1]  # the branch and where it leads, on one line
                    item = (f"◆ {_short(step.note)} → {target}", item[1])
                    skip = k + 1
                if (visit, item[0]) in seen:
                    continue
                seen.add((visit, item[0]))
                for c, items, _ in lane:
                    if c == (step.table, step.chain):
                        for it in items:
                            if it[0] == item[0]:
                                it[2] += o.probability
                                break
                        else:
                            items.append([item[0], item[1], o.probability, _line_no(step.where), len(items)])
    return order, lanes


def _line_no(where: str) -> int:
    digits = "".join(ch if ch.isdigit() else " " for ch in where).split()
    return int(digits[0]) if digits else 0


def _item(step: PathStep) -> tuple[str, str] | None:
    note = step.note
    if "not taken" in note or note.startswith("numgen: no entry"):
        return None
    if step.probability < 1.0 or note.startswith(("statistic", "numgen")):
        return (f"◆ {note}", "#b45309")
    if note.startswith(("DNAT", "SNAT", "MASQUERADE")):
        return (f"➜ {note}", "#1d4ed8")
    if note == "RETURN" or note == "end of chain":
        return ("↩ RETURN", "#4b5563") if note == "RETURN" else None
    for v, color in COLORS.items():
        if note.upper().startswith(v) or note.startswith("policy " + v):
            return (f"■ {note.upper()}", color)
    if note.startswith(("jump", "goto")):
        return (f"→ {note}", "#4b5563")
    if note.startswith(("mark", "affinity", "LOG", "NOTRACK")):
        return (f"• {note}", "#6d28d9" if note.startswith("affinity") else "#374151")
    return None


def render_svg(result: TraceResult) -> str:
    order, lanes = _lanes(result)
    edges = set(zip(order, order[1:], strict=False))
    body: list[str] = []
    title = f"{result.protocol} {result.source} → {result.destination}:{result.port}"
    body.append(_t(20, 28, title, 18, "bold"))
    body.append(_t(20, 48, f"starts at {result.start} · {result.ruleset_format} ruleset · "
                           f"verdict {result.verdict}" + (" · masqueraded" if result.masquerade else ""),
                   12, fill="#4b5563"))
    body += _frame(order, edges)

    # lanes
    top = 320
    lane_heights = []
    for i, (hook, chains) in enumerate(lanes):
        x = 20 + i * (LANE_W + 16)
        body.append(f'<rect x="{x}" y="{top}" width="{LANE_W}" height="26" rx="4" fill="#1e3a8a"/>')
        body.append(_t(x + 10, top + 18, f"{i + 1}. {hook}", 13, "bold", "#ffffff"))
        y = top + 36
        for name, items, _ in chains:
            items = sorted(items, key=lambda it: (it[3], it[4]))  # in rule order
            shown = items[:MAX_ITEMS]
            h = 22 + LINE_H * (len(shown) + (len(items) > MAX_ITEMS))
            table, chain = name
            body.append(f'<rect x="{x}" y="{y}" width="{LANE_W}" height="{h}" rx="5" fill="#ffffff" stroke="#94a3b8"/>')
            body.append(_t(x + 8, y + 15, _fit(chain, 34), 12, "bold", mono=True))
            body.append(_t(x + LANE_W - 8, y + 15, _fit(table, 12), 10, fill="#6b7280", anchor="end"))
            ly = y + 15
            for text, color, share, _, _ in shown:
                ly += LINE_H
                if share < 0.99995:
                    body.append(_t(x + LANE_W - 8, ly, f"{share * 100:.0f}%", 11, "bold", "#b45309", "end"))
                body.append(_t(x + 14, ly, _fit(text, 41 if share < 0.99995 else 46), 11, fill=color, mono=True))
            if len(items) > MAX_ITEMS:
                ly += LINE_H
                body.append(_t(x + 14, ly, f"… {len(items) - MAX_ITEMS} more", 11, fill="#6b7280"))
            y += h + 8
        lane_heights.append(y - top)
    y = top + (max(lane_heights) if lane_heights else 0) + 24

    # outcomes
    body.append(_t(20, y, "Outcomes", 15, "bold"))
    y += 10
    bar_w = 220
    for o in result.outcomes:
        y += 26
        color = COLORS[o.verdict]
        body.append(_t(66, y, f"{o.probability * 100:.1f}%", 12, "bold", anchor="end"))
        body.append(f'<rect x="74" y="{y - 14}" width="{bar_w}" height="18" rx="3" fill="#f3f4f6"/>')
        body.append(f'<rect x="74" y="{y - 14}" width="{max(bar_w * o.probability, 2):.1f}" height="18" rx="3" '
                    f'fill="{color}" opacity="0.85"/>')
        label = f"{o.verdict}  {o.endpoint}" + ("  · masqueraded" if o.masquerade else "")
        if o.sticky:
            label += "  · sticky (session affinity)"
        body.append(_t(74 + bar_w + 12, y, label, 13, "bold", color, mono=True))
    if result.warnings:
        y += 30
        body.append(_t(20, y, f"{len(result.warnings)} rule(s) could not be fully evaluated (see the text output)",
                       12, fill="#b91c1c"))
    width = max(880, 40 + len(lanes) * (LANE_W + 16))
    height = y + 30
    defs = ('<defs>'
            '<marker id="on" markerUnits="userSpaceOnUse" markerWidth="10" markerHeight="8" refX="9" refY="4" orient="auto">'
            '<path d="M0,0 L10,4 L0,8 z" fill="#2563eb"/></marker>'
            '<marker id="off" markerUnits="userSpaceOnUse" markerWidth="10" markerHeight="8" refX="9" refY="4" orient="auto">'
            '<path d="M0,0 L10,4 L0,8 z" fill="#cbd5e1"/></marker></defs>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">{defs}'
            f'<rect width="100%" height="100%" fill="#ffffff"/>' + "\n".join(body) + "</svg>\n")
