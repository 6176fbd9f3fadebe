"""Matches: what a rule asks of a packet. One comparison model serves iptables and nftables.

A Cmp reads one or more packet fields (a concatenation, in nftables' words), optionally masks
them, and looks the tuple up in a SetData: exact elements through a dict (so a 10,000-entry
verdict map is one lookup), intervals (CIDRs, port ranges) by a scan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .core import CONT, NOMATCH, Branch, Context, Packet, PathStep, Rule, Step

PORTED = frozenset({6, 17, 132, 33, 136})
IFACE_UNKNOWN = "(unknown)"


def _fib_type(family: int, value: int, pkt: Packet, ctx: Context) -> str:
    if ctx.is_local(family, value):
        return "local"
    if family == 4:
        if value >> 28 == 0xE:
            return "multicast"
        return "broadcast" if value == 0xFFFFFFFF else "unicast"
    return "multicast" if value >> 120 == 0xFF else "unicast"


def _fam(family: int, which: str) -> Callable[[Packet, Context], object]:
    def get(p: Packet, c: Context) -> object:
        return getattr(p, which) if p.family == family else None
    return get


def _port(proto: int | None, which: str) -> Callable[[Packet, Context], object]:
    def get(p: Packet, c: Context) -> object:
        if proto is None:
            return getattr(p, which) if p.proto in PORTED else None
        return getattr(p, which) if p.proto == proto else None
    return get


# Field name -> reader. Address readers answer None for a packet of the other family, so that
# the whole match fails (as an `ip daddr` expression does on an IPv6 packet), negated or not.
FIELDS: dict[str, Callable[[Packet, Context], object]] = {
    "saddr": lambda p, c: p.src,
    "daddr": lambda p, c: p.dst,
    "ip saddr": _fam(4, "src"), "ip daddr": _fam(4, "dst"),
    "ip6 saddr": _fam(6, "src"), "ip6 daddr": _fam(6, "dst"),
    "l4proto": lambda p, c: p.proto,
    "ip protocol": lambda p, c: p.proto if p.family == 4 else None,
    "ip6 nexthdr": lambda p, c: p.proto if p.family == 6 else None,
    "th sport": _port(None, "sport"), "th dport": _port(None, "dport"),
    "tcp sport": _port(6, "sport"), "tcp dport": _port(6, "dport"),
    "udp sport": _port(17, "sport"), "udp dport": _port(17, "dport"),
    "sctp sport": _port(132, "sport"), "sctp dport": _port(132, "dport"),
    "mark": lambda p, c: p.mark,
    "iifname": lambda p, c: p.iif if p.iif is not None else IFACE_UNKNOWN,
    "oifname": lambda p, c: p.oif if p.oif is not None else IFACE_UNKNOWN,
    "fib daddr type": lambda p, c: _fib_type(p.family, p.dst, p, c),
    "fib saddr type": lambda p, c: _fib_type(p.family, p.src, p, c),
    "ct state": lambda p, c: "new",
    "ct original daddr": lambda p, c: p.dst if p.orig_dst is None else p.orig_dst,
    "ct original proto-dst": lambda p, c: p.dport if p.orig_dport is None else p.orig_dport,
    "ct status": lambda p, c: "dnat" if "dst" in p.nat_done else "",  # the DNAT bit, as `ct status dnat` tests it
    "tcp flags": lambda p, c: "syn" if p.proto == 6 else None,  # a new connection's first packet
    "icmp type": lambda p, c: None, "icmp code": lambda p, c: None,  # traced packets are never ICMP
    "icmpv6 type": lambda p, c: None, "icmpv6 code": lambda p, c: None,
    "nfproto": lambda p, c: "ipv4" if p.family == 4 else "ipv6",
}
FIELDS["iif"] = FIELDS["iifname"]
FIELDS["oif"] = FIELDS["oifname"]
INTERFACE_FIELDS = frozenset({"iifname", "oifname", "iif", "oif"})


def _component_matches(comp: object, value: object) -> bool:
    if isinstance(comp, tuple):
        return isinstance(value, int) and comp[0] <= value <= comp[1]
    if isinstance(comp, str) and comp.endswith(("*", "+")) and isinstance(value, str):
        return value.startswith(comp[:-1])
    return comp == value


@dataclass
class SetData:
    """Elements of a set or map: tuples of components (int, str, (lo, hi) interval, 'eth*')."""

    elements: list[tuple[object, ...]]
    values: list[object] | None = None  # a map's data, parallel to elements
    name: str = ""
    exact: dict[tuple[object, ...], int] = field(default_factory=dict, init=False)
    ranged: list[int] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        for i, el in enumerate(self.elements):
            el = tuple(c[0] if isinstance(c, tuple) and c[0] == c[1] else c for c in el)
            self.elements[i] = el
            if all(isinstance(c, int) or (isinstance(c, str) and not c.endswith(("*", "+"))) for c in el):
                self.exact.setdefault(el, i)
            else:
                self.ranged.append(i)

    def lookup(self, values: tuple[object, ...]) -> int | None:
        i = self.exact.get(values)
        if i is not None:
            return i
        for i in self.ranged:
            el = self.elements[i]
            if len(el) == len(values) and all(_component_matches(c, v) for c, v in zip(el, values, strict=True)):
                return i
        return None


Resolver = Callable[[], SetData]


@dataclass
class Cmp(Step):
    """fields (masked) == / != one of a set's elements."""

    fields: tuple[str, ...]
    masks: tuple[int | None, ...]
    data: SetData | None = None
    resolve: Resolver | None = None  # a named set, looked up on first use
    negate: bool = False
    plain = True

    def values(self, pkt: Packet, ctx: Context) -> tuple[object, ...] | None:
        out = []
        for name, mask in zip(self.fields, self.masks, strict=True):
            v = FIELDS[name](pkt, ctx)
            if v is None:
                return None
            if mask is not None:
                v = v & mask  # type: ignore[operator]
            out.append(v)
        return tuple(out)

    def set_data(self) -> SetData:
        if self.data is None:
            assert self.resolve is not None
            self.data = self.resolve()
        return self.data

    def test(self, pkt: Packet, ctx: Context) -> bool:
        vals = self.values(pkt, ctx)
        if vals is None:
            return False
        return (self.set_data().lookup(vals) is not None) != self.negate


@dataclass
class InterfaceCmp(Cmp):
    """An interface match: a packet from outside arrives on an interface the trace cannot know."""

    plain = False

    def run(self, pkt: Packet, ctx: Context, rule: Rule) -> list[Branch]:
        unknown = any(FIELDS[f](pkt, ctx) == IFACE_UNKNOWN for f in self.fields)
        if unknown:
            ctx.warn(rule, "interface unknown for this packet: assumed to be none of the named ones")
        return [(1.0, pkt, CONT if self.test(pkt, ctx) else NOMATCH)]


@dataclass
class Random(Step):
    """statistic --mode random / nth: the rule matches this share of new connections."""

    probability: float
    label: str = "random"

    def run(self, pkt: Packet, ctx: Context, rule: Rule) -> list[Branch]:
        p = min(max(self.probability, 0.0), 1.0)
        taken = pkt.with_step(_note(pkt, rule, f"{self.label} p={p:.4g}: taken", p))
        missed = pkt.with_step(_note(pkt, rule, f"{self.label} p={p:.4g}: not taken", 1 - p))
        return [(p, taken, CONT), (1.0 - p, missed, NOMATCH)]


@dataclass
class RecentCheck(Step):
    """Session affinity: is this client on the list/set? A new client never is (see walk)."""

    name: str
    negate: bool = False

    def run(self, pkt: Packet, ctx: Context, rule: Rule) -> list[Branch]:
        hit = pkt.returning == self.name
        if hit:
            pkt = pkt.with_step(_note(pkt, rule, f"affinity: client is on {self.name} (returning client)"))
        return [(1.0, pkt, CONT if hit != self.negate else NOMATCH)]


@dataclass
class Unevaluable(Step):
    """A match the tracer understands but cannot decide: named in the warnings, assumed."""

    reason: str
    assume: bool

    def run(self, pkt: Packet, ctx: Context, rule: Rule) -> list[Branch]:
        ctx.warn(rule, f"{self.reason}; assumed {'to match' if self.assume else 'not to match'}")
        return [(1.0, pkt, CONT if self.assume else NOMATCH)]


def _note(pkt: Packet, rule: Rule, note: str, probability: float = 1.0) -> PathStep:
    return PathStep("rule", pkt.hook, rule.table, rule.chain, rule.where, rule.text, note, probability)


def single(fields: Sequence[str], element: Sequence[object], negate: bool = False,
           masks: Sequence[int | None] | None = None) -> Cmp:
    """A Cmp against one element (the common `-d 10.0.0.0/8` case)."""
    cls = InterfaceCmp if INTERFACE_FIELDS & set(fields) else Cmp
    return cls(tuple(fields), tuple(masks or [None] * len(fields)), SetData([tuple(element)]), negate=negate)
