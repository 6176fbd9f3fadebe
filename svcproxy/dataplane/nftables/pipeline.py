"""The full sync's transactions, built in a worker thread: services in render order, chunk by
chunk (transaction k fills chunk k and declares chunk k+1), then the commit. NftablesDataplane
runs them (see its _full()); this part only decides what goes into each transaction."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from ...config import NodeConfig
from ...state import ProxyState
from . import names, session
from .commands import Tx
from .kernel import Driver
from .layout import Chain, Container
from .netlink import Compiler
from .render import BlockCache, ServiceRules, service_order
from .service import Element
from .transaction import Kernel, commit, delete_unused_sets, desired_elements, respecified, uses_sets

FILL_BATCH_CHAINS = 4000  # chains per fill transaction: the kernel's cost grows with batch size squared


class FullSyncPlanner:
    """The fill and commit transactions of a full sync, rendered through the dataplane's
    BlockCache and encoded for its driver (KernelIO) ahead of sending."""

    def __init__(self, cfg: NodeConfig, cache: BlockCache, io: Driver) -> None:
        self.cfg, self.cache, self.io = cfg, cache, io
        self.render_seconds = 0.0  # of the last full sync (rendered here, in the worker thread)

    def steps(self, state: ProxyState, view: Kernel, recreate_base: bool) -> Iterator[FillStep | CommitStep]:
        """The full sync's transactions, run in the worker thread (one per next()): the fills,
        then the commit. view is the worker's copy of the kernel record, kept as the fills
        will leave it."""
        self.render_seconds = 0.0
        self.cache.claim(state)
        previous: _Chunk | None = None
        deferred = _Fill(Tx(self.cfg), None)  # fills only nft can encode: one nft run for them all
        for chunk in itertools.chain(self._chunks(state, dict(view.chains), set(view.sets)), [None]):
            fill = _Fill(Tx(self.cfg), self.io.compiler() if self.io.use_netlink else None)
            if previous is not None:
                fill.add_maps(previous)
                fill.add_fills(previous, deferred)
                fill.add_ranges(previous)
            if chunk is not None:
                fill.declare(chunk)
            if fill.tx:
                batch = None
                if fill.compiler is not None:
                    batch = self.io.netlink_session().frame(self.io.family, fill.compiler.messages)
                yield FillStep(fill.tx, batch, fill.declared, fill.declared_sets + fill.maps, fill.filled)
                fill.record(view, previous)
            previous = chunk
        if deferred.tx:
            yield FillStep(deferred.tx, None, [], [], deferred.filled)
            view.chains.update((c.name, c.rules) for c in deferred.filled)
        yield self._commit_step(state, view, recreate_base)

    def _commit_step(self, state: ProxyState, view: Kernel, recreate_base: bool) -> CommitStep:
        rules = self.cache.all(state)  # all cached by now; forgets services no longer there
        chains: dict[str, Chain] = {}
        sets: dict[str, Container] = {}
        for r in rules:
            for name, c in r.chains.items():
                chains.setdefault(name, c)
            sets.update(r.sets)
        elements = desired_elements(self.cfg, (r.elements for r in rules))
        tx = commit(self.cfg, chains, elements, view, recreate_base)
        respec = respecified(view, sets)  # an affinity timeout changed: re-create the set
        forced = uses_sets(chains, respec, view)
        tx.flush_chains(forced)
        for name in respec:
            tx.delete_set(name)
            tx.add_container(sets[name])
        for c in chains.values():
            if c.name in forced or view.chains.get(c.name) != c.rules:
                tx.fill_chain(c, flush=c.name not in forced)
        delete_unused_sets(tx, sets, view)
        return CommitStep(tx, self._frame(tx), rules, chains, sets, elements)

    def _frame(self, tx: Tx) -> session.Batch | None:
        messages = self.io.compile(tx)
        return self.io.netlink_session().frame(self.io.family, messages) if messages is not None else None

    def _chunks(self, state: ProxyState, known: dict[str, tuple[str, ...] | None],
                known_sets: set[str]) -> Iterator[_Chunk]:
        """Services in render order, grouped so that each chunk fills ~FILL_BATCH_CHAINS chains;
        a service's chains stay in one chunk (they refer to each other)."""
        seen: set[str] = set()
        seen_sets: set[str] = set()
        fresh: set[str] = set()  # shared endpoint maps new in this sync (known to be empty)
        chunk = _Chunk()
        for key in sorted(state.services, key=service_order):
            start = time.perf_counter()
            r = self.cache.service(state.services[key], state.zone)
            self.render_seconds += time.perf_counter() - start
            for name, c in r.chains.items():
                if name in seen:
                    continue
                seen.add(name)
                if name not in known:
                    chunk.fresh[name] = None
                    chunk.fill.append(c)
                elif known[name] is None:
                    chunk.fill.append(c)
            for name, s in r.sets.items():
                if name in seen_sets:  # a shared endpoint map declared in this sync: add the ranges
                    if name in fresh:
                        chunk.ranges += [e for e in r.elements if e.container == name]
                elif name not in known_sets:
                    seen_sets.add(name)
                    if not names.is_affinity_set(name):  # the maps layout's: declared where used
                        chunk.new_maps.append((s, [e for e in r.elements if e.container == name]))
                        if names.is_shared_endpoints_map(name):
                            fresh.add(name)
                    else:
                        chunk.new_sets.append(s)
            if len(chunk.fill) >= FILL_BATCH_CHAINS:
                yield chunk
                chunk = _Chunk()
        if chunk.fill or chunk.new_sets or chunk.new_maps:
            yield chunk


@dataclass
class _Fill:
    """One fill transaction as it is built: what it holds, and its netlink encoding so far
    (compiler None: nft's job, because something in it only nft can encode)."""

    tx: Tx
    compiler: Compiler | None
    filled: list[Chain] = field(default_factory=list)
    maps: list[Container] = field(default_factory=list)
    declared: list[str] = field(default_factory=list)
    declared_sets: list[Container] = field(default_factory=list)

    def _take(self, part: Tx) -> None:
        if self.compiler is not None and not self.compiler.encodes(part):
            self.compiler = None
        self.tx.extend(part)

    def add_maps(self, previous: _Chunk) -> None:
        """The maps layout's endpoint maps, with their elements, in the transaction whose rules
        use them: the encoder refers to them by id, not by a name the kernel would search for
        in the table's list of every set. The kernel finds an id by walking the transaction
        from its start, so the declarations come first."""
        if not previous.new_maps:
            return
        part = Tx(self.tx.cfg)
        for m, _ in previous.new_maps:
            part.add_container(m)
            self.maps.append(m)
        for m, els in previous.new_maps:
            part.add_elements(m.name, els)
        self._take(part)

    def add_fills(self, previous: _Chunk, deferred: _Fill) -> None:
        """The previous chunk's chains, those with a numgen vmap first: binding each anonymous
        map to its rule walks the whole transaction so far (the kernel's
        __nft_set_trans_bind), so these are cheap while the transaction is still short. A
        chain netlink.py cannot encode (a firewall chain's anonymous set) goes to deferred."""
        for c in sorted(previous.fill, key=_without_vmap):
            part = Tx(self.tx.cfg)
            part.fill_chain(c, flush=c.name not in previous.fresh)
            if self.compiler is not None and not self.compiler.encodes(part):
                deferred.tx.extend(part)
                deferred.filled.append(c)
                continue
            self.tx.extend(part)
            self.filled.append(c)

    def add_ranges(self, previous: _Chunk) -> None:
        """More ranges for shared endpoint maps declared earlier in this sync."""
        if not previous.ranges:
            return
        part = Tx(self.tx.cfg)
        by_map: dict[str, list[Element]] = {}
        for e in previous.ranges:
            by_map.setdefault(e.container, []).append(e)
        for name in sorted(by_map):
            part.add_elements(name, by_map[name])
        self._take(part)

    def declare(self, chunk: _Chunk) -> None:
        """The next chunk's new affinity sets and chains (empty, unreferenced until filled)."""
        part = Tx(self.tx.cfg)
        self.declared_sets = chunk.new_sets
        for s in self.declared_sets:
            part.add_container(s)
        self.declared = list(chunk.fresh)  # in render order, as `nft list` shows them
        for name in self.declared:
            part.add_chain(Chain(name))
        self._take(part)

    def record(self, view: Kernel, previous: _Chunk | None) -> None:
        """What the kernel holds once it took this transaction."""
        view.sets.update((c.name, c) for c in self.declared_sets + self.maps)
        for m, els in previous.new_maps if previous is not None else ():
            view.elements[m.name] = {e.key: e for e in els}
        for e in previous.ranges if previous is not None else ():
            view.elements[e.container].setdefault(e.key, e)
        view.chains.update((name, ()) for name in self.declared)
        view.chains.update((c.name, c.rules) for c in self.filled)


@dataclass
class _Chunk:
    """Per-service chains of consecutive services: to fill (new ones are also declared)."""

    fill: list[Chain] = field(default_factory=list)
    fresh: dict[str, None] = field(default_factory=dict)  # not in the kernel yet, in order
    new_sets: list[Container] = field(default_factory=list)  # declared a transaction ahead
    new_maps: list[tuple[Container, list[Element]]] = field(default_factory=list)  # declared where used
    ranges: list[Element] = field(default_factory=list)  # more ranges for shared maps new in this sync


@dataclass
class FillStep:
    """One fill transaction and what to record once the kernel took it."""

    tx: Tx
    batch: session.Batch | None  # None: nft's job
    declared: list[str]
    declared_sets: list[Container]
    filled: list[Chain]


@dataclass
class CommitStep:
    """The full sync's commit, and the desired state it programs (to record once it went in)."""

    tx: Tx
    batch: session.Batch | None
    rules: list[ServiceRules]
    chains: dict[str, Chain]
    sets: dict[str, Container]
    elements: dict[str, dict[str, Element]]


def _without_vmap(chain: Chain) -> bool:
    return not any(" vmap { " in r for r in chain.rules)
