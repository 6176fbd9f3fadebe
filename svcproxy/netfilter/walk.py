"""Walk a packet through netfilter as the kernel does: hooks, then base chains by priority.

A new connection from the node itself goes OUTPUT -> routing -> POSTROUTING and, when it is
addressed to the node, on through the loopback: PREROUTING -> INPUT, where nat is not
consulted again (the connection is confirmed by then). Any other packet goes PREROUTING, then
routing on the (possibly DNATed) destination picks INPUT (a local address) or FORWARD, and a
forwarded packet leaves through POSTROUTING. A nat chain is consulted once per connection and
manip type (the first DNAT/SNAT binds it), as conntrack does.

Branching steps (statistic, numgen) split the packet into weighted copies; every copy is
walked to its end, so the result is a probability distribution over ends.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import replace

from .core import (
    CONT,
    NOMATCH,
    Branch,
    Chain,
    Context,
    Packet,
    PathStep,
    Rule,
    Ruleset,
    TraceError,
    Verdict,
)

MAX_DEPTH = 200  # deeper than any sane ruleset; a loop is caught long before this
MAX_BRANCHES = 20_000  # a guard against rulesets that branch exponentially
RETURN = Verdict("return")
FALLTHROUGH = Verdict("return", note="end of chain")
NAT_MANIP = {"PREROUTING": "dst", "OUTPUT": "dst", "INPUT": "src", "POSTROUTING": "src", "FORWARD": "-"}

Final = tuple[float, Packet, str]  # (probability, packet at its end, ACCEPT | DROP | REJECT)
State = tuple[float, Packet]


def rule_step(pkt: Packet, rule: Rule, note: str, probability: float = 1.0) -> PathStep:
    """A path entry for something a rule did to this packet."""
    return PathStep("rule", pkt.hook, rule.table, rule.chain, rule.where, rule.text, note, probability)


class Walker:
    def __init__(self, ruleset: Ruleset, ctx: Context) -> None:
        self.rs = ruleset
        self.ctx = ctx
        self.branches = 0

    # -- hooks -------------------------------------------------------------------------
    def trace(self, pkt: Packet) -> list[Final]:
        """Every end the packet can reach, with its probability."""
        finals: list[Final] = []
        if pkt.local_origin:  # the socket's route lookup already picked the way out
            pkt = replace(pkt, oif="lo" if self.is_local_dst(pkt) else None)
            states = self.run_hook("OUTPUT", [(1.0, pkt)], finals)
            states = [(p, self.route(pk, local_origin=True)) for p, pk in states]
            states = self.run_hook("POSTROUTING", states, finals)
            to_me = [(p, pk) for p, pk in states if self.is_local_dst(pk)]
            finals += [(p, pk, "ACCEPT") for p, pk in states if not self.is_local_dst(pk)]
            # Back in through the loopback interface: the connection is confirmed by now.
            looped = [(p, replace(pk, iif="lo", confirmed=True)) for p, pk in to_me]
            looped = self.run_hook("PREROUTING", looped, finals)
            looped = self.run_hook("INPUT", looped, finals)
            finals += [(p, pk, "ACCEPT") for p, pk in looped]
        else:
            states = self.run_hook("PREROUTING", [(1.0, pkt)], finals)
            states = [(p, self.route(pk)) for p, pk in states]
            local = [(p, pk) for p, pk in states if self.is_local_dst(pk)]
            forward = [(p, pk) for p, pk in states if not self.is_local_dst(pk)]
            local = self.run_hook("INPUT", local, finals)
            forward = self.run_hook("FORWARD", forward, finals)
            forward = self.run_hook("POSTROUTING", forward, finals)
            finals += [(p, pk, "ACCEPT") for p, pk in local + forward]
        return finals

    def is_local_dst(self, pkt: Packet) -> bool:
        return self.ctx.is_local(pkt.family, pkt.dst)

    def route(self, pkt: Packet, local_origin: bool = False) -> Packet:
        """The routing decision on the current destination (after any DNAT)."""
        if self.is_local_dst(pkt):
            note = "destination is local: loopback" if local_origin else "destination is local: INPUT"
            oif = "lo"
        else:
            note = "destination is remote: out" if local_origin else "destination is remote: FORWARD"
            oif = None
        return pkt.with_step(PathStep("route", pkt.hook, note=note), oif=oif)

    def run_hook(self, hook: str, states: list[State], finals: list[Final]) -> list[State]:
        if not states:
            return states
        states = [(p, pk.with_step(PathStep("hook", hook), hook=hook)) for p, pk in states]
        for chain in self.rs.base_chains(hook, states[0][1].family):
            nxt: list[State] = []
            for p, pk in states:
                if chain.kind == "nat" and (pk.confirmed or NAT_MANIP[hook] in pk.nat_done):
                    nxt.append((p, pk))  # nat is consulted once per connection and manip type
                    continue
                for q, pk2, v in self.run_chain(chain, pk, p, ()):
                    assert isinstance(v, Verdict)
                    kind = v.kind
                    if kind == "return":  # fell off the end of a base chain: its policy
                        if chain.policy == "drop":
                            step = PathStep("policy", hook, chain.table, chain.name, chain.where, "", "policy DROP")
                            finals.append((q, pk2.with_step(step), "DROP"))
                        else:
                            nxt.append((q, pk2))
                    elif kind in ("accept", "nat"):
                        nxt.append((q, pk2))
                    elif kind == "drop":
                        finals.append((q, pk2, "DROP"))
                    elif kind == "reject":
                        finals.append((q, pk2, "REJECT"))
                    else:  # pragma: no cover - run_chain resolves jumps itself
                        raise TraceError(f"unexpected verdict {kind} at the top of {chain.key}")
            states = nxt
        return states

    # -- chains ------------------------------------------------------------------------
    def run_chain(self, chain: Chain, pkt: Packet, prob: float, stack: tuple[str, ...]) -> list[Branch]:
        note = "" if stack else "base"  # a base chain, entered from its hook
        pkt = pkt.with_step(PathStep("chain", pkt.hook, chain.table, chain.name, chain.where, note=note))
        return self._run_from(chain, 0, pkt, prob, (*stack, chain.key))

    def _enter(self, rule: Rule, table: str, target: str, stack: tuple[str, ...]) -> Chain:
        sub = self.rs.chain(table, target, rule)
        if sub.key in stack:
            names = [s.split("/", 1)[-1] for s in (*stack[stack.index(sub.key):], sub.key)]
            raise TraceError(f"loop of jumps: {' -> '.join(names)}; a packet would never leave it "
                             "(the kernel refuses such a ruleset)", where=rule.where, text=rule.text)
        if len(stack) >= MAX_DEPTH:
            raise TraceError(f"jumps nest deeper than {MAX_DEPTH} chains", where=rule.where, text=rule.text)
        if sub.hook:
            raise TraceError(f"jump to base chain {target!r} (the kernel refuses this)",
                             where=rule.where, text=rule.text)
        return sub

    def _run_from(self, chain: Chain, idx: int, pkt: Packet, prob: float, stack: tuple[str, ...]) -> list[Branch]:
        results: list[Branch] = []
        while True:
            if chain.index is not None:
                idx = _next_candidate(chain.index(pkt), idx)
            if idx >= chain.size:
                results.append((prob, pkt, FALLTHROUGH))
                return results
            rule = chain.rule(idx)
            branches = self.eval_rule(rule, pkt)
            cont: list[State] = []
            for q, pk, res in branches:
                p = prob * q
                if res is CONT or res is NOMATCH:
                    cont.append((p, pk))
                    continue
                assert isinstance(res, Verdict)
                if res.kind != "nat":  # nat statements record themselves
                    pk = pk.with_step(rule_step(pk, rule, res.describe(), q))
                kind = res.kind
                if kind == "continue":
                    cont.append((p, pk))
                elif kind in ("jump", "goto"):
                    sub = self._enter(rule, chain.table, res.target, stack)
                    for p2, pk2, r2 in self.run_chain(sub, pk, p, stack):
                        assert isinstance(r2, Verdict)
                        if r2.kind != "return":
                            results.append((p2, pk2, r2))
                        elif kind == "jump":  # back in this chain, after the rule that jumped
                            back = PathStep("chain", pk2.hook, chain.table, chain.name, chain.where, note="back")
                            cont.append((p2, pk2.with_step(back)))
                        else:  # a goto's chain returns straight to our caller
                            results.append((p2, pk2, RETURN))
                elif kind == "return":
                    results.append((p, pk, RETURN))
                else:
                    results.append((p, pk, res))
            idx += 1
            self.branches += max(len(cont) - 1, 0)
            if self.branches > MAX_BRANCHES:
                raise TraceError(f"the packet splits into more than {MAX_BRANCHES} branches here",
                                 where=rule.where, text=rule.text)
            if len(cont) == 1:
                prob, pkt = cont[0]
                continue
            for p, pk in cont:
                results += self._run_from(chain, idx, pk, p, stack)
            return results

    def eval_rule(self, rule: Rule, pkt: Packet) -> list[Branch]:
        """Run a rule's steps in order; every answer is CONT (rule ran through), NOMATCH or a Verdict."""
        ctx = self.ctx
        steps = rule.steps
        i = 0
        n = len(steps)
        while i < n and steps[i].plain:  # fast path: plain matches, no branching
            if not steps[i].test(pkt, ctx):
                return [(1.0, pkt, NOMATCH)]
            i += 1
        states: list[State] = [(1.0, pkt)]
        out: list[Branch] = []
        for step in steps[i:]:
            nxt: list[State] = []
            for p, pk in states:
                for q, pk2, res in step.run(pk, ctx, rule):
                    if q <= 0.0:
                        continue
                    if res is CONT:
                        nxt.append((p * q, pk2))
                    else:
                        out.append((p * q, pk2, res))
            states = nxt
            if not states:
                break
        out += [(p, pk, CONT) for p, pk in states]
        return out


def _next_candidate(candidates: list[int], idx: int) -> int:
    """The first candidate rule position at or after idx (past the end when there is none)."""
    i = bisect_left(candidates, idx)
    return candidates[i] if i < len(candidates) else 1 << 62
