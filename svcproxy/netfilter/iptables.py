"""Parse iptables-save output (raw, mangle, nat, filter, security; IPv4 or IPv6) into the model.

The text is split into chains up front, cheaply; each rule is parsed when the walker first
looks at it. Long chains (KUBE-SERVICES holds one rule per service port) get an index by exact
destination address, so a trace reads only the rules that can match its packet.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

from .core import (
    IPTABLES_TABLES,
    Chain,
    Packet,
    Rule,
    Ruleset,
    TraceError,
    no_gc,
)
from .iptables_rule import BUILTIN_TARGETS, RuleParser

INDEX_MIN_RULES = 32
_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
_DEST = re.compile(r"(?:^|\s)(!\s+)?(?:-d|--destination)\s+([0-9a-fA-F.:]+)(/(?:32|128))?(?=\s|$)")


def tokenize(text: str) -> list[str]:
    if '"' not in text:
        return text.split()
    return [b if b else q.replace('\\"', '"') for q, b in _TOKEN.findall(text)]


def parse_iptables(text: str, index: bool = True, table: str | None = None) -> Ruleset:
    """iptables-save / iptables-restore text -> Ruleset (chains built and rules parsed lazily).

    Text without any `*table` line (rules as docs and kube-proxy's tests print them) is read as
    one table: `table` if given, else the one its chain and target names belong to."""
    with no_gc():
        return _Scan(text, index, table).ruleset


# Names that only one table has, for headerless text (kube-proxy's KUBE-SERVICES and
# KUBE-NODEPORTS exist in both nat and filter, so they decide nothing).
_NAT_NAMES = {"PREROUTING", "POSTROUTING", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "DNAT", "SNAT", "MASQUERADE",
              "REDIRECT"}
_NAT_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-FW-")
_FILTER_NAMES = {"INPUT", "FORWARD", "KUBE-FORWARD", "KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-FIREWALL",
                 "KUBE-FIREWALL", "KUBE-PROXY-CANARY", "REJECT"}
_RULE_HEAD = re.compile(r"^\s*(?:\[\d+:\d+\]\s*)?(?:-[AIN]|--append|--insert|--new-chain)\s+(\S+)|^\s*:(\S+)")
_JUMP = re.compile(r"\s(?:-j|--jump|-g|--goto)\s+(\S+)")


def _headerless_chains(lines: list[str]) -> tuple[set[str], set[str]]:
    """(chains named by -A/-I/-N/: lines, chains and targets jumped to) of headerless text."""
    chains: set[str] = set()
    targets: set[str] = set()
    for line in lines:
        m = _RULE_HEAD.match(line)
        if m:
            chains.add(m.group(1) or m.group(2))
            targets.update(_JUMP.findall(line))
    return chains, targets


def _guess_table(names: set[str]) -> str:
    nat = any(n in _NAT_NAMES or n.startswith(_NAT_PREFIXES) for n in names)
    filt = any(n in _FILTER_NAMES for n in names)
    if nat and not filt:
        return "nat"
    if filt and not nat:
        return "filter"
    why = "both nat and filter chains" if nat else "no chain or target that only one table has"
    raise TraceError(f"rules without a '*nat' or '*filter' line, and {why}: add the table lines "
                     "(as iptables-save prints them) or say which table with --table")


class _Scan:
    """One pass over the lines: tables, chain declarations, and each chain's rule line numbers."""

    def __init__(self, text: str, index: bool, table_hint: str | None = None) -> None:
        self.lines = text.split("\n")
        self.index = index
        family = 6 if "ip6tables-save" in text[:300] else None
        rs = self.ruleset = Ruleset("iptables", family)
        rs.factory = self.build
        # per table: chain -> [policy, declaration line, rule line, rule line, ...]
        self.tables: dict[str, dict[str, list]] = {}
        current: dict[str, list] = {}
        table: str | None = None
        headerless = not any(line.lstrip().startswith("*") for line in self.lines)
        if headerless:
            table, current = self.headerless_table(table_hint)
        for n, line in enumerate(self.lines, 1):
            if line.startswith("-A "):  # the common case first, kept cheap: iptables-save's single spaces
                end = line.find(" ", 3)
                lst = current.get(line[3:] if end < 0 else line[3:end])
                if lst is not None:
                    lst.append(n)
                    continue
            line = line.strip()
            if not line or line[0] == "#":
                continue
            if line[0] == "[":  # iptables-save -c: [packets:bytes] -A ...
                line = line.split("]", 1)[-1].strip()
            if line[0] == "*":
                table = self.open_table(line[1:].strip(), n)
                current = self.tables[table]
                continue
            if line == "COMMIT":
                table, current = None, {}
                continue
            if table is None:
                raise TraceError("rule outside a table: a '*nat' (or *filter, ...) line must come first",
                                 n, self.lines[n - 1])
            self.line(table, current, line, n)
        if table is not None and not headerless:
            raise TraceError(f"table {table} is not closed with COMMIT (truncated input?)")
        rs.declared = {(t, name): v for t, chains in self.tables.items() for name, v in chains.items()}
        for t in self.tables:
            for hook, _ in IPTABLES_TABLES[t]:
                rs.chain(t, hook)  # built-in chains are base chains: build them now

    def headerless_table(self, hint: str | None) -> tuple[str, dict[str, list]]:
        """The one table of text without `*table` lines, every chain it names declared."""
        chains, targets = _headerless_chains(self.lines)
        table = hint or _guess_table(chains | targets)
        self.open_table(table, 0)
        declared = self.tables[table]
        for name in sorted(chains | (targets - BUILTIN_TARGETS)):
            declared.setdefault(name, ["-", 0])
        return table, declared

    def open_table(self, table: str, n: int) -> str:
        if table not in IPTABLES_TABLES:
            raise TraceError(f"unknown table {table!r} (expected raw, mangle, nat, filter or security)",
                             n or None, self.lines[n - 1] if n else "")
        chains = self.tables.setdefault(table, {})
        for hook, _ in IPTABLES_TABLES[table]:  # built-in chains exist without a ':' line
            chains.setdefault(hook, ["ACCEPT", n])
        return table

    def line(self, table: str, chains: dict[str, list], line: str, n: int) -> None:
        if line[0] == ":":
            parts = line[1:].split()
            if len(parts) < 2:
                raise TraceError("malformed chain line (expected ':NAME POLICY [packets:bytes]')", n, line)
            lst = chains.setdefault(parts[0], [parts[1], n])
            lst[0], lst[1] = parts[1], n
            return
        parts = line.split(None, 2)
        op = parts[0]
        if op in ("-N", "--new-chain") and len(parts) >= 2:
            chains.setdefault(parts[1], ["-", n])
            return
        if op not in ("-A", "--append", "-I", "--insert") or len(parts) < 2:
            raise TraceError("cannot read this line (expected -A CHAIN ..., :CHAIN POLICY, *table or COMMIT)",
                             n, line)
        lst = chains.get(parts[1])
        if lst is None:
            raise TraceError(f"rule for chain {parts[1]!r}, which table {table} does not declare", n, line)
        if op in ("-I", "--insert"):
            pos = parts[2].split(" ", 1)[0] if len(parts) > 2 else ""
            lst.insert(2 + (int(pos) - 1 if pos.isdigit() else 0), n)
        else:
            lst.append(n)

    def build(self, key: tuple[str, str], value: object) -> Chain:
        table, name = key
        policy, decl, *rule_lines = value  # type: ignore[misc]
        hooks = dict(IPTABLES_TABLES[table])
        hook = name if name in hooks else None
        chain = Chain(table, name, self.ruleset.family, hook=hook, priority=hooks.get(name, 0),
                      policy=policy.lower() if hook else "accept", kind="nat" if table == "nat" else "filter",
                      where=f"line {decl}" if decl else "headerless rules", size=len(rule_lines))
        chain.parse = self.parser(chain, rule_lines)
        if self.index and len(rule_lines) >= INDEX_MIN_RULES:
            chain.index = _dst_index([self.rest(n)[1] for n in rule_lines])
        return chain

    def rest(self, n: int) -> tuple[str, str]:
        """(the rule's line as written, its matches and target: what follows -A CHAIN / -I CHAIN [N])."""
        raw = self.lines[n - 1]
        line = raw.strip()
        if line.startswith("["):
            line = line.split("]", 1)[-1].strip()
        parts = line.split(None, 2)
        rest = parts[2] if len(parts) > 2 else ""
        if parts[0] in ("-I", "--insert"):
            pos, _, tail = rest.partition(" ")
            rest = tail if pos.isdigit() else rest
        return raw.strip(), rest

    def parser(self, chain: Chain, rule_lines: list[int]) -> Callable[[int], Rule]:
        def parse(i: int) -> Rule:
            n = rule_lines[i]
            text, rest = self.rest(n)
            rule = Rule(f"line {n}", text, (), chain.table, chain.name, n)
            rule.steps = tuple(RuleParser(self.ruleset, chain.table, rule).parse(tokenize(rest)))
            return rule
        return parse


def _addr_int(text: str) -> int | None:
    try:
        if ":" in text:
            return int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except OSError:
        return None


def _dst_index(rests: list[str]) -> Callable[[Packet], list[int]]:
    """Rule positions by exact destination; rules without one are candidates for every packet."""
    always: list[int] = []
    by_dst: dict[int, list[int]] = {}
    for i, rest in enumerate(rests):
        m = _DEST.search(rest)
        exact = m is not None and not m.group(1) and m.group(3) in (None, "/128" if ":" in m.group(2) else "/32")
        addr = _addr_int(m.group(2)) if m is not None and exact else None
        if addr is None:
            always.append(i)
        else:
            by_dst.setdefault(addr, []).append(i)
    cache: dict[int, list[int]] = {}

    def candidates(pkt: Packet) -> list[int]:
        got = cache.get(pkt.dst)
        if got is None:
            got = cache[pkt.dst] = sorted(always + by_dst.get(pkt.dst, []))
        return got
    return candidates
