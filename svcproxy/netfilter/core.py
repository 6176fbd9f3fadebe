"""The tracer's small rule model, shared by the iptables and nftables parsers and the walker.

A ruleset is a set of chains; base chains hang off a netfilter hook at a priority. A rule is a
sequence of steps (matches and statements, in order, as nftables evaluates them; an iptables
rule is its matches followed by one target). Each step looks at a Packet and answers with one
or more weighted branches, so random load balancing (statistic, numgen) is followed down every
branch. Chains parse their rules lazily, so a trace only pays for the rules it looks at.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..gcpause import gc_paused

HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")

# iptables tables: the hooks each attaches to, at its priority. Order at a hook = priority order.
IPTABLES_TABLES: dict[str, tuple[tuple[str, int], ...]] = {
    "raw": (("PREROUTING", -300), ("OUTPUT", -300)),
    "mangle": tuple((h, -150) for h in HOOKS),
    "nat": (("PREROUTING", -100), ("OUTPUT", -100), ("INPUT", 100), ("POSTROUTING", 100)),
    "filter": (("INPUT", 0), ("FORWARD", 0), ("OUTPUT", 0)),
    "security": (("INPUT", 50), ("FORWARD", 50), ("OUTPUT", 50)),
}

PROTO_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132,
                 "dccp": 33, "udplite": 136, "esp": 50, "ah": 51, "gre": 47}


no_gc = gc_paused  # parsing and walking a 100k-rule ruleset: see gcpause.py


class TraceError(ValueError):
    """The ruleset cannot be traced: names the line (or place) and says what is wrong."""

    def __init__(self, message: str, line: int | None = None, text: str = "", where: str = "") -> None:
        where = where or (f"line {line}" if line else "")
        shown = f"\n  {text.strip()}" if text else ""
        super().__init__(f"{where + ': ' if where else ''}{message}{shown}")
        self.line = line
        self.where = where


def ip_text(family: int, value: int) -> str:
    return str(ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value))


def endpoint_text(family: int, value: int, port: int) -> str:
    """ip:port as kube-proxy prints it; [ipv6]:port."""
    return f"{ip_text(family, value)}:{port}" if family == 4 else f"[{ip_text(family, value)}]:{port}"


@dataclass(frozen=True, slots=True)
class PathStep:
    """One thing on the packet's way: a hook, a chain entered, or a rule that did something."""

    kind: str  # "hook" | "chain" | "rule" | "policy" | "route"
    hook: str
    table: str = ""
    chain: str = ""
    where: str = ""  # "line 12" or, for JSON input, the rule's place
    text: str = ""
    note: str = ""  # e.g. "jump KUBE-SVC-X", "DNAT to 10.0.1.1:80", "random p=0.333: taken"
    probability: float = 1.0  # the probability of this branch, where the rule branched

    def describe(self) -> str:
        if self.kind == "hook":
            return self.hook
        if self.kind == "chain":
            return f"{self.table}/{self.chain}" + (" (back)" if self.note == "back" else "")
        if self.kind == "route":
            return f"routing: {self.note}"
        return f"{self.table}/{self.chain}{' ' + self.where if self.where else ''}: {self.note}"


@dataclass(frozen=True, slots=True)
class Packet:
    """The packet (and its connection) as it travels; immutable, so branches never share state."""

    family: int
    src: int
    dst: int
    sport: int
    dport: int
    proto: int  # protocol number: 6 tcp, 17 udp, 132 sctp
    mark: int = 0
    iif: str | None = None
    oif: str | None = None
    hook: str = ""
    local_origin: bool = False
    confirmed: bool = False  # the connection is known already (or untracked): nat is not consulted
    nat_done: frozenset[str] = frozenset()  # "dst" / "src" manips bound for this connection
    masquerade: bool = False  # the source was rewritten (MASQUERADE or SNAT)
    returning: str | None = None  # affinity scenario: the recent list / set this client is on
    sticky: tuple[str, ...] = ()  # affinity lists this connection was recorded in
    orig_dst: int | None = None  # the destination before DNAT (conntrack's original tuple)
    orig_dport: int | None = None
    path: tuple[PathStep, ...] = ()

    def with_step(self, step: PathStep, **changes: object) -> Packet:
        return replace(self, path=(*self.path, step), **changes)


@dataclass
class Context:
    """What matches need besides the packet: the node's addresses, and where warnings go."""

    family: int
    local: frozenset[int]
    warnings: dict[tuple[str, str], str] = field(default_factory=dict)

    def is_local(self, family: int, value: int) -> bool:
        if family != self.family:
            return False
        if value in self.local:
            return True
        return value >> 24 == 127 if family == 4 else value == 1

    def warn(self, rule: Rule, reason: str) -> None:
        self.warnings.setdefault((rule.where, reason), rule.text.strip())


# What a step answers. CONT: go on with the next step of the rule; NOMATCH: the rule does not
# apply; anything else is a Verdict that ends the rule.
CONT = "cont"
NOMATCH = "nomatch"


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: str  # accept | drop | reject | return | jump | goto | continue | nat
    target: str = ""  # chain for jump/goto
    note: str = ""

    def describe(self) -> str:
        return self.note or (f"{self.kind} {self.target}" if self.target else self.kind.upper())


Branch = tuple[float, Packet, object]  # (probability of this branch, packet after, CONT|NOMATCH|Verdict)


class Step:
    """A match or a statement. Plain matches override test(); the rest override run()."""

    plain = False  # a plain match: test() says it all, no branching, no change to the packet

    def test(self, pkt: Packet, ctx: Context) -> bool:
        raise NotImplementedError

    def run(self, pkt: Packet, ctx: Context, rule: Rule) -> list[Branch]:
        return [(1.0, pkt, CONT if self.test(pkt, ctx) else NOMATCH)]


@dataclass(slots=True)
class Rule:
    where: str  # "line 12"
    text: str
    steps: tuple[Step, ...]
    table: str = ""
    chain: str = ""
    line: int = 0


@dataclass(eq=False)
class Chain:
    """A chain; base chains carry hook, priority, policy and type (nat chains are special).

    Rules are parsed on first use (parse(i) -> Rule) so that a trace through a 100k-rule
    ruleset parses only the chains, and with an index only the rules, it looks at.
    """

    table: str  # display name: "nat" or "ip kube-proxy"
    name: str
    family: int | None  # None: both (inet, or iptables input whose family the packet sets)
    hook: str | None = None
    priority: int = 0
    policy: str = "accept"
    kind: str = "filter"  # filter | nat | route
    where: str = ""
    size: int = 0
    parse: Callable[[int], Rule] | None = None
    index: Callable[[Packet], list[int]] | None = None  # sorted rule positions worth evaluating
    _cache: dict[int, Rule] = field(default_factory=dict)

    def rule(self, i: int) -> Rule:
        r = self._cache.get(i)
        if r is None:
            assert self.parse is not None
            r = self._cache[i] = self.parse(i)
        return r

    def rules(self) -> list[Rule]:
        return [self.rule(i) for i in range(self.size)]

    @property
    def key(self) -> str:
        return f"{self.table}/{self.name}"


@dataclass
class Ruleset:
    """Chains by (table, name), and the base chains of each hook in priority order."""

    format: str  # iptables | nftables
    family: int | None = None  # set where the input says (ip6tables-save) or implies its family
    chains: dict[tuple[str, str], Chain] = field(default_factory=dict)
    sets: dict[tuple[str, str], object] = field(default_factory=dict)  # nftables named sets/maps
    dynamic_sets: set[tuple[str, str]] = field(default_factory=set)  # sets filled by the packets
    # Chains declared but not built yet (a 10,000-service ruleset has 40,000 chains; a trace
    # enters a dozen): declared[key] is what factory(key, value) needs to build the chain.
    declared: dict[tuple[str, str], object] = field(default_factory=dict)
    factory: Callable[[tuple[str, str], object], Chain] | None = None
    notes: list[str] = field(default_factory=list)  # things about the ruleset a trace should mention

    def add(self, chain: Chain) -> None:
        self.chains[(chain.table, chain.name)] = chain

    def has_chain(self, table: str, name: str) -> bool:
        return (table, name) in self.chains or (table, name) in self.declared

    def chain(self, table: str, name: str, rule: Rule | None = None) -> Chain:
        key = (table, name)
        c = self.chains.get(key)
        if c is not None:
            return c
        if key in self.declared and self.factory is not None:
            c = self.chains[key] = self.factory(key, self.declared.pop(key))
            return c
        where, text = (rule.where, rule.text) if rule else ("", "")
        raise TraceError(f"jump to chain {name!r}, which table {table} does not have; "
                         "check the chain name or include its declaration", where=where, text=text)

    def base_chains(self, hook: str, family: int) -> list[Chain]:
        found = [c for c in self.chains.values()
                 if c.hook == hook and (c.family is None or c.family == family)]
        return sorted(found, key=lambda c: c.priority)

    def dispose(self) -> None:
        """Break the parser's reference cycles so the ruleset is freed at once, without waiting
        for (and paying) a collector pass over a 100k-rule object graph."""
        for c in self.chains.values():
            c.parse = c.index = None
            c._cache.clear()
        self.chains.clear()
        self.sets.clear()
        self.declared.clear()
        self.factory = None

    def parse_all(self) -> None:
        """Parse every rule now (to report every bad rule, or for the naive benchmark)."""
        for table, name in list(self.declared):
            self.chain(table, name)
        for c in list(self.chains.values()):
            c.rules()
