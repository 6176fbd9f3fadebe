"""Turn desired ServiceRules and what the kernel holds into transactions (commands.Tx).

Three shapes:
- declare(): create chains and affinity sets that don't exist yet (empty and unreferenced, so
  invisible to traffic); kept apart from their rules because the kernel resolves references to
  chains created in the same transaction by a linear walk of that transaction.
- fill(): give chains their rules (flush first if they exist), in moderate batches.
- declare_fixed(): the table, its maps and sets, the fixed regular chains (through nft).
- commit(): the atomic switch: base chains, every map and set element, stale chains removed.
A partial sync is one transaction holding the diff of the changed services only (plan_partial).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from ...config import NodeConfig
from . import names
from .commands import Tx
from .layout import (
    NODEPORT_IPS,
    SHARED_CONTAINERS,
    Chain,
    Container,
    addr_type,
    containers,
    fixed_chains,
    nodeport_set_ips,
)
from .render import ServiceRules, static_elements
from .service import Element

log = logging.getLogger(__name__)


@dataclass
class Kernel:
    """What we believe the kernel's kube-proxy table holds (updated only after a successful apply).

    chains maps a per-service chain to its rules, or None where the content is unknown (found
    at startup, programmed by an earlier process)."""

    exists: bool = False
    chains: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    sets: dict[str, Container] = field(default_factory=dict)  # affinity sets, as declared
    elements: dict[str, dict[str, Element]] = field(default_factory=dict)  # container -> key -> element
    fixed: tuple | None = None  # fixed_part() as last declared by declare_fixed(); None: unknown
    # elements of SHARED_CONTAINERS (hairpin pairs): how many services claim each
    refs: Counter[tuple[str, str]] = field(default_factory=Counter)


def fixed_part(cfg: NodeConfig, service_cidrs: tuple[str, ...] = ()) -> tuple:
    """What declare_fixed() programs, to compare with Kernel.fixed."""
    return containers(cfg), tuple(c for c in fixed_chains(cfg, service_cidrs) if not c.hook)


def declare_fixed(cfg: NodeConfig, service_cidrs: tuple[str, ...] = ()) -> Tx:
    """The table, its sets and maps (declared, not flushed) and the fixed regular chains with
    their rules. This goes through nft (netlink.py does not encode these), so a full sync sends
    it only while the table is small (cold start) or when it changed: nft re-reads the whole
    table first. No base chain jumps here yet (they come with commit()), so on a cold start
    traffic sees none of it before the commit."""
    tx = Tx(cfg)
    tx.add_table()
    for c in containers(cfg):
        tx.add_container(c)
    regular = [c for c in fixed_chains(cfg, service_cidrs) if not c.hook]
    for c in regular:
        tx.add_chain(c)
        tx.fill_chain(c, flush=True)
    if nodeport_set_ips(cfg) is None:  # add+delete: delete alone fails when it does not exist
        tx.add_container(Container(NODEPORT_IPS, addr_type(cfg)))
        tx.delete_set(NODEPORT_IPS)
    return tx


def commit(cfg: NodeConfig, chains: dict[str, Chain], elements: dict[str, dict[str, Element]],
           kernel: Kernel, recreate_base: bool) -> Tx:
    """The atomic full-sync switch (after declare_fixed()): base chains and their jumps
    rewritten, every map and set flushed and its elements re-added, per-service chains no
    longer wanted flushed; the caller adds changed chains and delete_unused_sets(). netlink.py
    encodes all of it, so it does not wait for nft to read a large table."""
    tx = Tx(cfg)
    hooked = [c for c in fixed_chains(cfg) if c.hook]
    if recreate_base:  # so that changed hook properties (priorities) take effect
        for c in hooked:
            tx.add_chain(Chain(c.name))
            tx.delete_chains([c.name])
    for c in hooked:
        tx.add_chain(c)
        tx.flush_chains([c.name])
    for c in containers(cfg):
        tx.flush_container(c.kind, c.name)
    for c in hooked:
        tx.fill_chain(c, flush=False)
    for name, els in elements.items():
        if not names.is_data_container(name):
            tx.add_elements(name, els.values())
    # the maps layout's endpoint maps and members: only the elements that differ
    for name in sorted(kernel.sets):
        if names.is_data_container(name):
            wanted, known = elements.get(name, {}), kernel.elements.get(name)
            if known is None:  # content unknown (found at startup)
                tx.flush_container(names.container_kind(name), name)
                tx.add_elements(name, wanted.values())
            elif known != wanted:
                tx.delete_elements(name, [k for k, el in known.items() if wanted.get(k) != el])
                tx.add_elements(name, [el for k, el in wanted.items() if known.get(k) != el])
    # chains no longer used are only flushed here; deleted a second later (see NftablesDataplane)
    tx.flush_chains(name for name in sorted(kernel.chains) if name not in chains and kernel.chains[name] != ())
    return tx


def delete_unused_sets(tx: Tx, sets: dict[str, Container], kernel: Kernel) -> None:
    """Affinity sets no longer wanted; last in the transaction, after every chain whose rules
    use them was flushed or rewritten (the kernel refuses to delete a set in use)."""
    for name in sorted(kernel.sets):
        if name not in sets:
            tx.delete_set(name)


def desired_elements(cfg: NodeConfig, per_service: Iterable[Iterable[Element]]) -> dict[str, dict[str, Element]]:
    """Elements per container, first writer wins on a duplicate key (deterministic order)."""
    out: dict[str, dict[str, Element]] = {c.name: {} for c in containers(cfg)}
    for els in per_service:
        for el in els:
            out.setdefault(el.container, {}).setdefault(el.key, el)
    for el in static_elements(cfg):
        out.setdefault(el.container, {})[el.key] = el
    return out


@dataclass
class PartialPlan:
    """One transaction for a partial sync, and what it changes (to record once it succeeded)."""

    tx: Tx
    chains: dict[str, Chain]  # the changed services' chains, as they will be
    sets: dict[str, Container]
    stale_chains: list[str]  # flushed now, deleted by a later sync
    stale_sets: list[str]
    deletes: dict[str, list[str]]  # container -> keys
    adds: dict[str, list[Element]]
    refs: Counter[tuple[str, str]] = field(default_factory=Counter)  # change to Kernel.refs


def shared_refs(per_service: Iterable[Iterable[Element]]) -> Counter[tuple[str, str]]:
    """How many services claim each element of the shared containers (one claim per service)."""
    out: Counter[tuple[str, str]] = Counter()
    for els in per_service:
        out.update({(e.container, e.key) for e in els if e.container in SHARED_CONTAINERS})
    return out


def respecified(kernel: Kernel, sets: dict[str, Container]) -> list[str]:
    """Affinity sets in the kernel whose declaration (timeout) differs from the wanted one."""
    return [name for name, s in sets.items() if name in kernel.sets and kernel.sets[name] != s]


def uses_sets(chains: dict[str, Chain], set_names: list[str], kernel: Kernel) -> list[str]:
    """Chains (existing in the kernel) with a rule that refers to one of the sets."""
    if not set_names:
        return []
    refs = tuple(f"@{n} " for n in set_names)
    return [name for name, c in chains.items()
            if name in kernel.chains and any(ref in r + " " for r in c.rules for ref in refs)]


@dataclass
class _Sides:
    """The changed services' chains, sets and (own) elements before and after, merged."""

    old_chains: dict[str, None] = field(default_factory=dict)
    new_chains: dict[str, Chain] = field(default_factory=dict)
    old_sets: set[str] = field(default_factory=set)
    new_sets: dict[str, Container] = field(default_factory=dict)
    old_elements: dict[tuple[str, str], Element] = field(default_factory=dict)
    new_elements: dict[tuple[str, str], Element] = field(default_factory=dict)

    @classmethod
    def of(cls, changes: list[tuple[ServiceRules | None, ServiceRules | None]]) -> _Sides:
        sides = cls()
        for old, new in changes:
            if old is not None:
                sides.old_chains.update(dict.fromkeys(old.chains))
                sides.old_sets.update(old.sets)
                for el in old.elements:
                    if el.container not in SHARED_CONTAINERS:
                        sides.old_elements.setdefault((el.container, el.key), el)
            if new is not None:
                for name, c in new.chains.items():
                    sides.new_chains.setdefault(name, c)
                sides.new_sets.update(new.sets)
                for el in new.elements:
                    if el.container not in SHARED_CONTAINERS:
                        sides.new_elements.setdefault((el.container, el.key), el)
        return sides


def plan_partial(cfg: NodeConfig, kernel: Kernel, changes: list[tuple[ServiceRules | None, ServiceRules | None]]
                 ) -> PartialPlan:
    """The diff of the changed services (old rules in the kernel, new rules; None = absent)
    against what the kernel holds: only their chains, affinity sets and map elements."""
    sides = _Sides.of(changes)
    refs = shared_refs(new.elements for _, new in changes if new is not None)
    refs.subtract(shared_refs(old.elements for old, _ in changes if old is not None))
    tx = Tx(cfg)
    _chains_and_sets(tx, kernel, sides)
    deletes, adds = _element_changes(kernel, sides, refs)
    for container, keys in deletes.items():
        tx.delete_elements(container, keys)
    for container, els in adds.items():
        tx.add_elements(container, els)
    stale_chains = [n for n in sides.old_chains if n not in sides.new_chains and n in kernel.chains]
    tx.flush_chains(stale_chains)  # before deleting the affinity sets their rules use
    # (a shared endpoint map other services may still use stays; a full sync deletes it if unused)
    stale_sets = [n for n in sides.old_sets
                  if n not in sides.new_sets and n in kernel.sets and not names.is_shared_endpoints_map(n)]
    for name in stale_sets:
        tx.delete_set(name)
    return PartialPlan(tx, sides.new_chains, sides.new_sets, stale_chains, stale_sets, deletes, adds, refs)


def _chains_and_sets(tx: Tx, kernel: Kernel, sides: _Sides) -> None:
    """New sets and chains declared, changed chains rewritten. An affinity timeout changed:
    the set is re-created, the rules that use it flushed first and re-added."""
    respec = respecified(kernel, sides.new_sets)
    forced = uses_sets(sides.new_chains, respec, kernel)
    tx.flush_chains(forced)
    for name in respec:
        tx.delete_set(name)
    for name, s in sides.new_sets.items():
        if name not in kernel.sets or name in respec:
            tx.add_container(s)
    for name in sides.new_chains:
        if name not in kernel.chains:
            tx.add_chain(Chain(name))
    for name, c in sides.new_chains.items():
        if name in forced:
            tx.fill_chain(c, flush=False)
        elif kernel.chains.get(name) != c.rules:
            tx.fill_chain(c, flush=name in kernel.chains)


def _element_changes(kernel: Kernel, sides: _Sides, refs: Counter[tuple[str, str]]
                     ) -> tuple[dict[str, list[str]], dict[str, list[Element]]]:
    """Element keys to delete and elements to add, per container. An element another service
    holds is left to it (logged); a shared one (hairpin) is added by its first claim and
    deleted by its last."""
    deletes: dict[str, list[str]] = {}
    adds: dict[str, list[Element]] = {}
    for (container, key), el in sides.old_elements.items():
        if (container, key) not in sides.new_elements and kernel.elements.get(container, {}).get(key) == el:
            deletes.setdefault(container, []).append(key)
    for (container, key), el in sides.new_elements.items():
        current = kernel.elements.get(container, {}).get(key)
        if current == el:
            continue
        if current is not None:
            if sides.old_elements.get((container, key)) != current:
                log.warning("%s %s is already used by another service; not programmed for %s",
                            container, key, el.comment or "this service")
                continue
            deletes.setdefault(container, []).append(key)
        adds.setdefault(container, []).append(el)
    for (container, key), delta in refs.items():
        before = kernel.refs.get((container, key), 0)
        if before > 0 and before + delta <= 0:
            deletes.setdefault(container, []).append(key)
        elif before <= 0 < before + delta:
            adds.setdefault(container, []).append(Element(container, key))
    return deletes, adds
