"""Statements and targets: what a rule does to a packet once its matches hold."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .core import CONT, NOMATCH, Branch, Context, Packet, Rule, Step, Verdict, endpoint_text, ip_text
from .matches import Cmp, SetData, _note

NAT_HOOKS = {"dnat": ("PREROUTING", "OUTPUT"), "snat": ("POSTROUTING", "INPUT"),
             "masquerade": ("POSTROUTING",)}


@dataclass
class Do(Step):
    """A verdict: accept, drop, reject, return, jump X, goto X."""

    verdict: Verdict

    def run(self, pkt: Packet, ctx: Context, rule: Rule) -> list[Branch]:
        return [(1.0, pkt, self.verdict)]


@dataclass
class Nop(Step):
    """counter, comment, and the like: nothing that changes where the packet goes."""

    plain = True

    def test(self, pkt: Packet, ctx: Context) -> bool:
        return True


@dataclass
class Nat(Step):
    """DNAT / SNAT / MASQUERADE: binds the connection's mapping and ends the nat chain (accept)."""

    kind: str  # dnat | snat | masquerade
    family: int = 0
    addr: int | None = None
    port: int | None = None
    caveat: str = ""  # e.g. an address range, of which the trace takes the first address

    def run(self, pkt: Packet, ctx: Context, rule: Rule) -> list[Branch]:
        if self.caveat:
            ctx.warn(rule, self.caveat)
        if pkt.hook not in NAT_HOOKS[self.kind]:
            ctx.warn(rule, f"{self.kind} is not valid at {pkt.hook} (the kernel would refuse the rule); ignored")
            return [(1.0, pkt, NOMATCH)]
        if self.kind == "dnat":
            dst = pkt.dst if self.addr is None else self.addr
            dport = pkt.dport if self.port is None else self.port
            note = f"DNAT to {endpoint_text(pkt.family, dst, dport)}"
            pkt = pkt.with_step(_note(pkt, rule, note), dst=dst, dport=dport, nat_done=pkt.nat_done | {"dst"},
                                **original(pkt))
            return [(1.0, pkt, Verdict("nat", note=note))]
        if self.kind == "snat":
            note = "SNAT" + (f" to {ip_text(self.family or pkt.family, self.addr)}" if self.addr is not None else "")
        else:
            note = "MASQUERADE (source becomes the node's address)"
        pkt = pkt.with_step(_note(pkt, rule, note), masquerade=True, nat_done=pkt.nat_done | {"src"})
        return [(1.0, pkt, Verdict("nat", note=note))]


@dataclass
class SetMark(Step):
    """MARK / meta mark set: new mark = fn(old mark)."""

    fn: Callable[[int], int]
    text: str

    def run(self, pkt: Packet, ctx: Context, rule: Rule) -> list[Branch]:
        new = self.fn(pkt.mark) & 0xFFFFFFFF
        pkt = pkt.with_step(_note(pkt, rule, f"mark {pkt.mark:#x} -> {new:#x} ({self.text})"), mark=new)
        return [(1.0, pkt, CONT)]


def xmark(and_mask: int, or_val: int, xor_val: int) -> Callable[[int], int]:
    return lambda m: ((m & and_mask) | or_val) ^ xor_val


@dataclass
class Log(Step):
    """LOG / log: noted on the path; the packet carries on."""

    text: str = ""

    def run(self, pkt: Packet, ctx: Context, rule: Rule) -> list[Branch]:
        return [(1.0, pkt.with_step(_note(pkt, rule, f"LOG {self.text}".strip())), CONT)]


@dataclass
class Notrack(Step):
    """NOTRACK / notrack: no connection tracking, so no NAT for this packet."""

    def run(self, pkt: Packet, ctx: Context, rule: Rule) -> list[Branch]:
        return [(1.0, pkt.with_step(_note(pkt, rule, "NOTRACK (no NAT for this packet)"), confirmed=True), CONT)]


@dataclass
class RecentSet(Step):
    """recent --set / update @set { ip saddr }: the client is remembered, the choice is sticky."""

    name: str
    timeout: str = ""

    def run(self, pkt: Packet, ctx: Context, rule: Rule) -> list[Branch]:
        note = f"affinity: client recorded in {self.name}" + (f" for {self.timeout}" if self.timeout else "")
        return [(1.0, pkt.with_step(_note(pkt, rule, note), sticky=(*pkt.sticky, self.name)), CONT)]


@dataclass
class VMap(Step):
    """A verdict map: look the packet's fields up; a miss means the rule does not apply."""

    cmp: Cmp

    def run(self, pkt: Packet, ctx: Context, rule: Rule) -> list[Branch]:
        vals = self.cmp.values(pkt, ctx)
        data = self.cmp.set_data()
        i = None if vals is None else data.lookup(vals)
        if i is None:
            return [(1.0, pkt, NOMATCH)]
        assert data.values is not None
        v = data.values[i]
        assert isinstance(v, Verdict)
        return [(1.0, pkt, v)]


@dataclass
class NumgenVMap(Step):
    """numgen random mod N [offset O] vmap {...}: each value is drawn with probability 1/N."""

    mod: int
    offset: int
    data: SetData

    def run(self, pkt: Packet, ctx: Context, rule: Rule) -> list[Branch]:
        if self.mod <= 0:
            ctx.warn(rule, "numgen mod 0 never matches")
            return [(1.0, pkt, NOMATCH)]
        counts: dict[int | None, int] = {}
        for n in range(self.mod):
            i = self.data.lookup((n + self.offset,))
            counts[i] = counts.get(i, 0) + 1
        out: list[Branch] = []
        for i, c in counts.items():
            q = c / self.mod
            if i is None:
                out.append((q, pkt.with_step(_note(pkt, rule, f"numgen: no entry (p={q:.4g})", q)), NOMATCH))
                continue
            assert self.data.values is not None
            v = self.data.values[i]
            assert isinstance(v, Verdict)
            keys = [str(n + self.offset) for n in range(self.mod) if self.data.lookup((n + self.offset,)) == i]
            note = f"numgen {','.join(keys)} of mod {self.mod} (p={q:.4g})"
            out.append((q, pkt.with_step(_note(pkt, rule, note, q)), v))
        return out


@dataclass
class NumgenDnat(Step):
    """dnat to numgen random mod N map @m: each (lo-hi : address . port) range of m is drawn
    with probability (hi - lo + 1) / N; values with no range leave the packet untouched."""

    mod: int
    offset: int
    choices: tuple[tuple[int, int, int, int], ...]  # (lo, hi, address, port), by lo
    name: str = ""

    def run(self, pkt: Packet, ctx: Context, rule: Rule) -> list[Branch]:
        if pkt.hook not in NAT_HOOKS["dnat"]:
            ctx.warn(rule, f"dnat is not valid at {pkt.hook} (the kernel would refuse the rule); ignored")
            return [(1.0, pkt, NOMATCH)]
        first, last = self.offset, self.offset + self.mod - 1
        out: list[Branch] = []
        covered = 0
        where = f"@{self.name}" if self.name else "the map"
        for lo, hi, addr, port in self.choices:
            lo, hi = max(lo, first), min(hi, last)
            if lo > hi:
                continue
            q = (hi - lo + 1) / self.mod
            covered += hi - lo + 1
            target = endpoint_text(pkt.family, addr, port)
            shift = f" (offset {self.offset})" if self.offset else ""  # a port's slot of a shared map
            note = (f"numgen {lo - self.offset}-{hi - self.offset} of mod {self.mod}{shift} in {where} "
                    f"(p={q:.4g}): DNAT to {target}")
            taken = pkt.with_step(_note(pkt, rule, note, q), dst=addr, dport=port, nat_done=pkt.nat_done | {"dst"},
                                  **original(pkt))
            out.append((q, taken, Verdict("nat", note=f"DNAT to {target}")))
        if covered < self.mod:
            q = (self.mod - covered) / self.mod
            note = f"numgen: no entry in {where}" + (" (it is empty: no endpoints)" if not self.choices else "")
            out.append((q, pkt.with_step(_note(pkt, rule, f"{note} (p={q:.4g})", q)), NOMATCH))
        return out


def original(pkt: Packet) -> dict[str, int]:
    """The connection's original destination, kept by the first DNAT (ct original ...)."""
    if pkt.orig_dst is not None:
        return {}
    return {"orig_dst": pkt.dst, "orig_dport": pkt.dport}


STICKY_SEP = " -> "  # a sticky record of the maps layout: "<affinity map> -> <endpoint address>"


@dataclass
class RememberEndpoint(Step):
    """update @client-affinity-... { ip saddr : ip daddr }: the client is remembered with the
    endpoint it was DNATed to (the maps layout's ClientIP affinity)."""

    name: str

    def run(self, pkt: Packet, ctx: Context, rule: Rule) -> list[Branch]:
        record = f"{self.name}{STICKY_SEP}{ip_text(pkt.family, pkt.dst)}"
        note = f"affinity: client remembered in {self.name} with {ip_text(pkt.family, pkt.dst)}"
        return [(1.0, pkt.with_step(_note(pkt, rule, note), sticky=(*pkt.sticky, record)), CONT)]


@dataclass
class AffinityDnat(Step):
    """dnat to ip saddr map @client-affinity-... : port: a client the map remembers goes to its
    endpoint; a new client is not in it (the rule does not apply)."""

    name: str
    port: int | None

    def run(self, pkt: Packet, ctx: Context, rule: Rule) -> list[Branch]:
        returning = pkt.returning or ""
        if not returning.startswith(self.name + STICKY_SEP):
            return [(1.0, pkt.with_step(_note(pkt, rule, f"affinity: a new client is not in {self.name}")), NOMATCH)]
        import ipaddress

        addr = int(ipaddress.ip_address(returning[len(self.name) + len(STICKY_SEP):]))
        dport = pkt.dport if self.port is None else self.port
        target = endpoint_text(pkt.family, addr, dport)
        note = f"affinity: a returning client in {self.name}: DNAT to {target}"
        pkt = pkt.with_step(_note(pkt, rule, note), dst=addr, dport=dport, nat_done=pkt.nat_done | {"dst"},
                            **original(pkt))
        return [(1.0, pkt, Verdict("nat", note=note))]
