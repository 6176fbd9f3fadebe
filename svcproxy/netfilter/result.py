"""What a trace found: the outcomes (each reachable end with its probability) and the way there."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .core import Packet, PathStep, endpoint_text

VERDICT_ORDER = ("ACCEPT", "REJECT", "DROP")


@dataclass(frozen=True)
class Outcome:
    """One reachable end: where the packet goes, what happens to it, and how likely that is."""

    probability: float
    verdict: str  # ACCEPT | DROP | REJECT
    endpoint: str  # ip:port the packet is headed to at its end (the original destination if not rewritten)
    masquerade: bool
    path: tuple[PathStep, ...] = field(repr=False)  # the way of the most likely packet that ended here
    sticky: tuple[str, ...] = ()  # affinity lists/sets that remember this choice

    def to_dict(self) -> dict[str, object]:
        return {"probability": self.probability, "verdict": self.verdict, "endpoint": self.endpoint,
                "masquerade": self.masquerade}


@dataclass(frozen=True)
class Affinity:
    """Session affinity: a returning client on `name` goes where this says (the choice is sticky)."""

    name: str
    probability: float  # share of new clients recorded in this list
    endpoints: tuple[str, ...]  # where a returning client on this list ends


@dataclass
class TraceResult:
    source: str
    destination: str
    port: int
    protocol: str
    start: str  # PREROUTING | OUTPUT
    ruleset_format: str  # iptables | nftables
    outcomes: list[Outcome]
    warnings: list[str] = field(default_factory=list)
    affinity: list[Affinity] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """ACCEPT if any outcome is accepted, else the likeliest other verdict."""
        if any(o.verdict == "ACCEPT" for o in self.outcomes):
            return "ACCEPT"
        by: dict[str, float] = {}
        for o in self.outcomes:
            by[o.verdict] = by.get(o.verdict, 0.0) + o.probability
        return max(by, key=lambda v: (by[v], v)) if by else "DROP"

    @property
    def endpoints(self) -> list[str]:
        """Every destination an accepted packet ends at, sorted."""
        return sorted({o.endpoint for o in self.outcomes if o.verdict == "ACCEPT"})

    @property
    def masquerade(self) -> bool:
        return any(o.masquerade for o in self.outcomes if o.verdict == "ACCEPT")

    @property
    def sticky(self) -> bool:
        return bool(self.affinity)

    @property
    def path(self) -> list[str]:
        """Every step any outcome took, in the order first met (branches interleave)."""
        seen: dict[str, None] = {}
        for o in self.outcomes:
            for s in o.path:
                seen.setdefault(s.describe(), None)
        for a in self.affinity:
            seen.setdefault(f"affinity: a returning client on {a.name} goes to {', '.join(a.endpoints)} "
                            "(the choice is sticky)", None)
        return list(seen)

    def __str__(self) -> str:
        ends = ", ".join(f"{o.verdict} {o.endpoint}{' masq' if o.masquerade else ''} p={o.probability:.3g}"
                         for o in self.outcomes)
        return f"trace {self.protocol} {self.source} -> {self.destination}:{self.port}: {ends}"

    def to_dict(self) -> dict[str, object]:
        return {"verdict": self.verdict, "endpoints": self.endpoints, "masquerade": self.masquerade,
                "outcomes": [o.to_dict() for o in self.outcomes], "path": self.path}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


Final = tuple[float, Packet, str]


def outcomes_of(finals: list[Final]) -> list[Outcome]:
    """Group the walked ends by (verdict, endpoint, masquerade); their probabilities add up."""
    groups: dict[tuple[str, str, bool], list[Final]] = {}
    for f in finals:
        p, pkt, verdict = f
        key = (verdict, endpoint_text(pkt.family, pkt.dst, pkt.dport), pkt.masquerade)
        groups.setdefault(key, []).append(f)
    out = []
    for (verdict, ep, masq), fs in groups.items():
        best = max(fs, key=lambda f: f[0])
        sticky = tuple(dict.fromkeys(s for f in fs for s in f[1].sticky))
        out.append(Outcome(sum(f[0] for f in fs), verdict, ep, masq, best[1].path, sticky))
    total = sum(o.probability for o in out)
    assert abs(total - 1.0) < 1e-6, f"outcome probabilities sum to {total}, not 1"
    out.sort(key=lambda o: (VERDICT_ORDER.index(o.verdict), o.endpoint, o.masquerade))
    return out
