"""iptables-restore inputs for applying a Ruleset: pure functions, no I/O.

Full sync: one big `iptables-restore --noflush` slows down quadratically on nf_tables (a jump to
a chain made by an earlier transaction costs a search through every chain, and one transaction
grows superlinearly with its size), so a full sync is cut into ordered batches, each atomic:
  1. the filter table and the fixed nat chains (KUBE-MARK-MASQ, KUBE-POSTROUTING, canaries);
  2. groups of whole services (all chains of a service port in the same batch, so its jumps
     point at chains declared right there, which is cheap);
  3. KUBE-SERVICES and KUBE-NODEPORTS last, with the deletion of stale chains, so no packet is
     sent to a chain before it holds its rules. On a cold start (those chains are new) their
     rules are instead appended group by group, and only the final catch-all rule comes last.
Every chain is declared (flushed) and refilled in the same batch: never seen half-written.
Partial sync: one input carrying only the chains that changed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from . import names as n
from .blocks import PortBlock
from .render import Ruleset

FIXED_NAT = (n.MARK_MASQ, n.POSTROUTING, n.PROXY_CANARY)
ENTRY_NAT = (n.NODEPORTS, n.SERVICES)


def _decl(chain: str) -> str:
    return f":{chain} - [0:0]\n"


def _table(name: str, decls: Iterable[str], rules: Iterable[str], tail: str = "") -> str:
    return "".join([f"*{name}\n", *[_decl(c) for c in decls], *rules, tail, "COMMIT\n"])


def _delete(chains: Iterable[str]) -> tuple[list[str], str]:
    """Declaring a chain flushes it; -X then removes it (nothing references it any more)."""
    chains = sorted(chains)
    return chains, "".join(f"-X {c}\n" for c in chains)


def full_batches(rs: Ruleset, existing: Collection[str], batch_chains: int, cold: bool = False,
                 kubelet_firewall: bool = True) -> list[str]:
    """Restore inputs that together rewrite everything (see the module docstring).

    existing: per-service nat chains that may be in the kernel; those not in rs are deleted.
    cold: KUBE-SERVICES/KUBE-NODEPORTS do not exist yet (nothing to keep working meanwhile).
    kubelet_firewall: write KUBE-FIREWALL (False leaves kubelet's copy alone)."""
    filter_top = dict(rs.filter)
    if not kubelet_firewall:
        filter_top.pop(n.KUBELET_FIREWALL, None)
    first = _table("filter", filter_top, filter_top.values())
    first += _table("nat", (*FIXED_NAT, *ENTRY_NAT) if cold else FIXED_NAT, [rs.nat[c] for c in FIXED_NAT])
    batches = [first]
    blocks = [b for bl in rs.services.values() for b in bl]
    i = 0
    while i < len(blocks):
        group: list[PortBlock] = []
        count = 0
        while i < len(blocks) and (count < batch_chains or not group):
            group.append(blocks[i])
            count += len(blocks[i].chains)
            i += 1
        rules = [r for b in group for r in b.chain_rules]
        if cold:
            rules += [b.nat_nodeports + b.nat_services for b in group]
        batches.append(_table("nat", [c for b in group for c in b.chains], rules))
    wanted = {c for b in blocks for c in b.chains}
    stale, deletions = _delete(c for c in existing if c not in wanted)
    if cold:
        tail = rs.nat[n.SERVICES][len("".join(b.nat_services for b in blocks)):]
        batches.append(_table("nat", stale, [tail], deletions))
    else:
        batches.append(_table("nat", [*ENTRY_NAT, *stale], [rs.nat[c] for c in ENTRY_NAT], deletions))
    return batches


def partial_input(new: Ruleset, old: Ruleset, changed: Collection[str]) -> str:
    """One restore input with only the chains that differ from `old` (the last applied ruleset)
    for the changed services, plus the top-level chains whose text changed. Empty when nothing
    changed. Unchanged chains are left out entirely: under --noflush a `:CHAIN` line flushes the
    chain, so an endpoint chain whose rules are the same is not rewritten."""
    keys = set(changed) | (old.services.keys() - new.services.keys())
    decls: list[str] = []
    rules: list[str] = []
    gone: set[str] = set()
    kept: set[str] = set()
    for key in sorted(keys):
        now: tuple[PortBlock, ...] = new.services.get(key, ())
        before: tuple[PortBlock, ...] = old.services.get(key, ())
        if now == before:
            continue
        # chain by chain: a KUBE-SEP chain whose rules are the same stays as it is in the kernel
        applied = {c: text for b in before for c, text in zip(b.chains, b.chain_rules, strict=True)}
        for b in now:
            for c, text in zip(b.chains, b.chain_rules, strict=True):
                kept.add(c)
                if applied.get(c) != text:
                    decls.append(c)
                    rules.append(text)
        gone |= applied.keys()
    gone -= kept
    out = ""
    filter_changed = [c for c, text in new.filter.items() if old.filter.get(c) != text]
    if filter_changed:
        out += _table("filter", filter_changed, [new.filter[c] for c in filter_changed])
    nat_changed = [c for c, text in new.nat.items() if old.nat.get(c) != text]
    stale, deletions = _delete(gone)
    if nat_changed or decls or stale:
        out += _table("nat", [*nat_changed, *decls, *stale], [*[new.nat[c] for c in nat_changed], *rules],
                      deletions)
    return out
