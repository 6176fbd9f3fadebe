"""nftables mode: keeps the kernel's `kube-proxy` table in step with the desired state.

A full sync declares the table's fixed part, then declares and fills the per-service chains
chunk by chunk (new chains are unreferenced until the commit, so traffic never sees them
half-built) and then commits the base chains and every map element in one transaction,
flushing chains no longer used. A worker thread renders and encodes the next transaction while
the kernel digests the current one. A partial sync is one transaction with only the changed
services' chains, sets and elements. Unused chains are deleted by a later sync, a second after
their flush. What the kernel holds is tracked in a Kernel record, updated only after a
transaction succeeded.

Transactions go through our own netlink encoder on a kept-open socket (netlink.py): nft
re-reads the whole table on every run, seconds at 10,000 services. Only the table, its map and
set declarations and the fixed regular chains go through `nft -f`, and a full sync sends them
while the table is still empty (cold start) or when they changed."""

from __future__ import annotations

import gc
import itertools
import json
import logging
import secrets
import subprocess
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from ...config import NodeConfig
from ...state import ProxyState
from .. import ApplyError, SyncResult
from . import names, netlink, session
from .layout import Chain, Container
from .render import BlockCache, ServiceRules, service_order
from .service import Element
from .transaction import (
    Kernel,
    Tx,
    commit,
    declare_fixed,
    delete_unused_sets,
    desired_elements,
    fixed_part,
    plan_partial,
    respecified,
    uses_sets,
)

log = logging.getLogger(__name__)

STALE_CHAIN_DELAY = 1.0  # seconds between flushing a chain no longer used and deleting it
FILL_BATCH_CHAINS = 4000  # chains per fill transaction: the kernel's cost grows with batch size squared
RECORD_MAX_COMMANDS = 5000  # larger transactions are kept only as a summary in .transactions


# Above this many per-service chains, a periodic full sync checks names only (see _check_drift).
DRIFT_CHECK_MAX_CHAINS = 5000


class NftablesDataplane:
    mode = "nftables"

    def __init__(self, cfg: NodeConfig, nft: Sequence[str] = ("nft",), use_netlink: bool = True) -> None:
        self.cfg = cfg
        self.nft = tuple(nft)
        # our own netlink session for per-service changes (netlink.py); nft for the rest
        self.use_netlink = use_netlink
        self._session: session.Session | None = None
        self._anon_prefix = secrets.token_hex(4)
        self._batch = 0
        self._lock = threading.Lock()
        self.netlink_batches = 0  # how many transactions went through the session (for tests)
        # last sync: (path, commands, seconds) per transaction; ("render", services, seconds) too
        self.timings: list[tuple[str, int, float]] = []
        self._render_seconds = 0.0  # a full sync renders in the worker thread
        self.family = names.family_keyword(cfg.ip_family)
        self.cache = BlockCache(cfg)
        self.kernel: Kernel | None = None  # None: not read yet (startup)
        self.applied: dict[str, ServiceRules] = {}  # service key -> rules in the kernel
        self.need_full = True
        self.service_cidrs: tuple[str, ...] | None = None  # as in the kernel's cluster-ips-check
        self.started = False
        self.transactions: list[str] = []  # the nft input of the last sync, for tests and debugging
        # Chains no longer used, flushed at the given monotonic time. The kernel refuses to
        # delete a chain that a just-removed (anonymous) map element still pins, so, as
        # kube-proxy does, they are deleted by a later sync.
        self.stale: dict[str, float] = {}

    # --- the Dataplane protocol ---------------------------------------------------------

    def sync(self, state: ProxyState, changed: Collection[str] | None = None) -> SyncResult:
        if not self.started:
            remove_iptables_leftovers(self.cfg)
            self.started = True
        self.transactions = []
        self.timings = []
        try:
            self._delete_stale_chains()
            if changed is None or self.need_full or self.kernel is None or state.service_cidrs != self.service_cidrs:
                if changed is None and self.kernel is not None and not self.need_full:
                    self._check_drift(self.kernel)  # a periodic resync repairs hand edits
                with gc_paused():
                    return self._full(state)
            return self._partial(state, changed)
        except ApplyError:
            self.need_full = True
            self.kernel = None  # what the kernel holds is uncertain now: read it again
            raise

    def cleanup(self) -> None:
        """Delete the kube-proxy tables (both families), nothing else; fine when there are none."""
        for family in ("ip", "ip6"):
            try:
                self._run(f"delete table {family} {names.TABLE}\n")
            except ApplyError as e:
                if "No such file or directory" not in str(e):
                    raise
        self.kernel = None
        self.applied = {}
        self.stale = {}
        self.service_cidrs = None
        self.need_full = True

    def _delete_stale_chains(self) -> None:
        kernel = self.kernel
        if kernel is None or not self.stale:
            return
        now = time.monotonic()
        due = sorted(n for n, t in self.stale.items() if now - t >= STALE_CHAIN_DELAY and kernel.chains.get(n) == ())
        if not due:
            return
        tx = Tx(self.cfg)
        tx.delete_chains(due)
        try:
            self._run_tx(tx)
        except ApplyError as e:  # not fatal: they are empty; try again next time
            log.warning("could not delete stale chains yet: %s", e)
            return
        for name in due:
            kernel.chains.pop(name, None)
            self.stale.pop(name, None)

    # --- full sync ----------------------------------------------------------------------

    def _full(self, state: ProxyState) -> SyncResult:
        recreate_base = self.kernel is None
        if self.kernel is None:
            self.kernel = self.read_kernel()
        kernel = self.kernel

        # 1. the table, its maps and sets and the fixed regular chains, through nft: on a cold
        #    start while the table is still empty (nft reads it all first), later only when they
        #    changed or the table is small enough to rewrite them cheaply (which repairs hand edits)
        fixed = fixed_part(self.cfg, state.service_cidrs)
        if kernel.fixed != fixed or len(kernel.chains) <= DRIFT_CHECK_MAX_CHAINS:
            self._run_tx(declare_fixed(self.cfg, state.service_cidrs))
            kernel.fixed = fixed
        kernel.exists = True

        # 2. declare new per-service chains and affinity sets and fill them (and chains of
        #    unknown content, found at startup), chunk by chunk: transaction k fills chunk k and
        #    declares chunk k+1. New chains are unreferenced until the commit, and a chain of
        #    unknown content is flushed and refilled in one transaction, so traffic never sees
        #    one half-built. A worker thread renders and encodes transaction k+1 while the
        #    kernel digests transaction k (the socket call releases the GIL).
        #    The worker then prepares the commit (3.) while the kernel digests the last fill.
        if self.use_netlink:
            self._get_session()  # opened here, used by the worker to frame batches
        view = Kernel(True, dict(kernel.chains), dict(kernel.sets))  # the worker's own record
        steps = self._steps(state, view, recreate_base)
        waited = 0.0  # for the timings: how long the kernel waited for the worker
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(next, steps)
            while True:
                start = time.perf_counter()
                step = pending.result()
                waited += time.perf_counter() - start
                if isinstance(step, CommitStep):
                    break
                pending = pool.submit(next, steps)
                self._run_tx(step.tx, step.batch)
                kernel.sets.update((c.name, c) for c in step.declared_sets)
                kernel.chains.update((name, ()) for name in step.declared)
                kernel.chains.update((c.name, c.rules) for c in step.filled)
        self.timings += [("render", len(state.services), self._render_seconds), ("wait", 0, waited)]

        # 3. commit: base chains, all elements, changed chains, stale chains and sets deleted
        self._run_tx(step.tx, step.batch)
        rules, chains, sets, elements = step.rules, step.chains, step.sets, step.elements
        now = time.monotonic()
        for name in kernel.chains:
            if name not in chains:
                self.stale.setdefault(name, now)
        kernel.chains = {name: () for name in self.stale if name in kernel.chains} | {
            name: c.rules for name, c in chains.items()}
        for name in chains:
            self.stale.pop(name, None)
        kernel.sets = dict(sets)
        kernel.elements = elements
        self.applied = {r.service.key: r for r in rules}
        self.service_cidrs = state.service_cidrs
        self.need_full = False
        return self._result(True)

    def _steps(self, state: ProxyState, view: Kernel, recreate_base: bool) -> Iterator[FillStep | CommitStep]:
        """The full sync's transactions, run in the worker thread (one per next()): the fills,
        then the commit. view is the worker's copy of the kernel record, kept as the fills
        will leave it."""
        self._render_seconds = 0.0
        previous: _Chunk | None = None
        deferred = Tx(self.cfg)  # fills only nft can encode: one nft run for them all
        deferred_chains: list[Chain] = []
        for chunk in itertools.chain(self._chunks(state, dict(view.chains), set(view.sets)), [None]):
            tx = Tx(self.cfg)
            compiler = self._compiler() if self.use_netlink else None
            filled: list[Chain] = []
            if previous is not None:
                # Chains with a numgen vmap first: binding each anonymous map to its rule walks
                # the whole transaction so far (the kernel's __nft_set_trans_bind), so these
                # are cheap while the transaction is still short.
                for c in sorted(previous.fill, key=_without_vmap):
                    lines = Tx(self.cfg)
                    lines.fill_chain(c, flush=c.name not in previous.fresh)
                    if compiler is not None and not _encodes(compiler, lines.lines):
                        deferred.lines += lines.lines  # e.g. a firewall chain's anonymous set
                        deferred_chains.append(c)
                        continue
                    tx.lines += lines.lines
                    filled.append(c)
            declared: list[str] = []
            declared_sets: list[Container] = []
            if chunk is not None:
                declared_sets = chunk.new_sets
                for s in declared_sets:
                    tx.add_container(s)
                declared = list(chunk.fresh)  # in render order, as `nft list` shows them
                for name in declared:
                    tx.add_chain(Chain(name))
                if compiler is not None and not _encodes(compiler, tx.lines[len(tx.lines) - len(declared)
                                                                            - len(declared_sets):]):
                    compiler = None  # nft's job after all
            if tx:
                batch = None
                if compiler is not None:
                    batch = self._get_session().frame(self.family, compiler.messages)
                yield FillStep(tx, batch, declared, declared_sets, filled)
                view.sets.update((c.name, c) for c in declared_sets)
                view.chains.update((name, ()) for name in declared)
                view.chains.update((c.name, c.rules) for c in filled)
            previous = chunk
        if deferred:
            yield FillStep(deferred, None, [], [], deferred_chains)
            view.chains.update((c.name, c.rules) for c in deferred_chains)
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
        messages = self._compile(tx)
        return self._get_session().frame(self.family, messages) if messages is not None else None

    def _chunks(self, state: ProxyState, known: dict[str, tuple[str, ...] | None],
                known_sets: set[str]) -> Iterator[_Chunk]:
        """Services in render order, grouped so that each chunk fills ~FILL_BATCH_CHAINS chains;
        a service's chains stay in one chunk (they refer to each other)."""
        seen: set[str] = set()
        seen_sets: set[str] = set()
        chunk = _Chunk()
        for key in sorted(state.services, key=service_order):
            start = time.perf_counter()
            r = self.cache.service(state.services[key], state.zone)
            self._render_seconds += time.perf_counter() - start
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
                if name not in known_sets and name not in seen_sets:
                    seen_sets.add(name)
                    chunk.new_sets.append(s)
            if len(chunk.fill) >= FILL_BATCH_CHAINS:
                yield chunk
                chunk = _Chunk()
        if chunk.fill or chunk.new_sets:
            yield chunk

    # --- partial sync -------------------------------------------------------------------

    def _partial(self, state: ProxyState, changed: Collection[str]) -> SyncResult:
        kernel = self.kernel
        assert kernel is not None
        new_rules: dict[str, ServiceRules | None] = {}
        for key in sorted(changed):
            svc = state.services.get(key)
            new_rules[key] = self.cache.service(svc, state.zone) if svc is not None else None
        plan = plan_partial(self.cfg, kernel, [(self.applied.get(k), new) for k, new in new_rules.items()])
        tx = plan.tx
        if tx:
            self._run_tx(tx)
        # the transaction went through: record it
        for name, c in plan.chains.items():
            kernel.chains[name] = c.rules
        kernel.sets.update(plan.sets)  # name -> declaration
        now = time.monotonic()
        for name in plan.stale_chains:
            kernel.chains[name] = ()
            self.stale[name] = now
        for name in plan.chains:
            self.stale.pop(name, None)
        for name in plan.stale_sets:
            kernel.sets.pop(name, None)
        for container, keys in plan.deletes.items():
            for k in keys:
                kernel.elements.get(container, {}).pop(k, None)
        for container, els in plan.adds.items():
            for el in els:
                kernel.elements.setdefault(container, {})[el.key] = el
        for key, new in new_rules.items():
            if new is None:
                self.applied.pop(key, None)
            else:
                self.applied[key] = new
        return self._result(False)

    # --- kernel I/O ---------------------------------------------------------------------

    def read_kernel(self) -> Kernel:
        """Names of our per-service chains and affinity sets already in the kernel (startup,
        and the periodic check for hand edits)."""
        if self.use_netlink:
            return self._read_kernel_netlink()
        kernel = Kernel()
        for kind in ("chains", "sets"):
            out = self._run_capture([*self.nft, "-j", "list", kind, self.family])
            for item in json.loads(out or "{}").get("nftables", []):
                obj = item.get(kind[:-1])
                if not obj or obj.get("table") != names.TABLE or obj.get("family") != self.family:
                    continue
                kernel.exists = True
                name = obj["name"]
                if kind == "chains" and names.is_service_chain(name):
                    kernel.chains[name] = None  # content unknown: rewrite it
                elif kind == "sets" and names.is_affinity_set(name):
                    kernel.sets[name] = Container(name, "ipv4_addr" if self.family == "ip" else "ipv6_addr",
                                                  flags="dynamic,timeout", timeout=int(obj.get("timeout", 0)))
        return kernel

    def _read_kernel_netlink(self) -> Kernel:
        """read_kernel() through the session: a netlink dump of the table's chains and sets."""
        kernel = Kernel()
        addr = "ipv4_addr" if self.family == "ip" else "ipv6_addr"
        try:
            chains = self._get_session().dump(self.family, session.GETCHAIN, names.TABLE, frozenset({3}))
            sets = self._get_session().dump(self.family, session.GETSET, names.TABLE, frozenset({2, 11}))
        except OSError as e:
            raise ApplyError(f"could not read table {self.family} {names.TABLE}: {e}") from e
        kernel.exists = bool(chains or sets)  # our table always has its fixed chains
        for attrs in chains:
            name = attrs.get(3, b"").rstrip(b"\0").decode()  # NFTA_CHAIN_NAME
            if names.is_service_chain(name):
                kernel.chains[name] = None  # content unknown: rewrite it
        for attrs in sets:
            name = attrs.get(2, b"").rstrip(b"\0").decode()  # NFTA_SET_NAME
            if names.is_affinity_set(name):
                timeout_ms = int.from_bytes(attrs.get(11, b""), "big")  # NFTA_SET_TIMEOUT
                kernel.sets[name] = Container(name, addr, flags="dynamic,timeout", timeout=timeout_ms // 1000)
        return kernel

    def _check_drift(self, kernel: Kernel) -> None:
        """Find what someone changed by hand so the full sync repairs it: a deleted table means
        starting afresh; per-service chains whose rule count differs are rewritten.

        Counting rules needs `nft list table`, which nft 1.0.6 takes ~28 s to print at 10k
        services; above DRIFT_CHECK_MAX_CHAINS the table, the chain names and the fixed chains'
        rule counts are checked (a netlink dump of every rule takes ~20 s there)."""
        if len(kernel.chains) > DRIFT_CHECK_MAX_CHAINS:
            found = self.read_kernel()
            if not found.exists or found.chains.keys() != kernel.chains.keys():
                log.warning("nftables: our table or chains changed by hand; reprogramming it all")
                self.kernel = found
            elif self._fixed_chains_changed(kernel):
                kernel.fixed = None  # the full sync re-declares them
            return
        try:
            out = self._run_capture([*self.nft, "list", "table", self.family, names.TABLE])
        except ApplyError:
            log.warning("nftables: table %s %s is gone; reprogramming it", self.family, names.TABLE)
            self.kernel = self.read_kernel()
            return
        counts: dict[str, int] = {}
        current = None
        for line in out.splitlines():
            text = line.strip()
            if line.startswith("\tchain "):
                current = text[6:-2].strip().strip('"')
                counts[current] = 0
            elif current is not None:
                if text == "}":
                    current = None
                elif text and not text.startswith(("comment ", "type ")):
                    counts[current] += 1
        for name, rules in list(kernel.chains.items()):
            if rules is not None and counts.get(name) != len(rules):
                log.warning("nftables: chain %s was changed by hand; rewriting it", name)
                if name in counts:
                    kernel.chains[name] = None
                else:
                    del kernel.chains[name]

    def _fixed_chains_changed(self, kernel: Kernel) -> bool:
        """Rule counts of the fixed regular chains (services, masquerading, ...) against what
        declare_fixed() wrote: one small netlink dump per chain. Large tables rewrite them only
        when this finds a difference (through nft, which reads the whole table first)."""
        if not self.use_netlink or kernel.fixed is None:
            return False
        try:
            for chain in kernel.fixed[1]:
                found = self._get_session().dump(self.family, session.GETRULE, names.TABLE, frozenset(), chain.name)
                if len(found) != len(chain.rules):
                    log.warning("nftables: chain %s was changed by hand; rewriting the fixed chains", chain.name)
                    return True
        except OSError as e:
            log.warning("nftables: could not read the fixed chains (%s); rewriting them", e)
            return True
        return False

    def _run_tx(self, tx: Tx, messages: list | session.Batch | None = None) -> None:
        if not tx:
            return
        start = time.perf_counter()
        path = self._send(tx, messages)
        self.timings.append((path, len(tx.lines), time.perf_counter() - start))

    def _compiler(self) -> netlink.Compiler:
        with self._lock:
            self._batch += 1  # anonymous map names: unique per process and batch
            batch = self._batch
        return netlink.Compiler(self.family, names.TABLE, f"{batch:x}{self._anon_prefix}")

    def _compile(self, tx: Tx) -> list | None:
        """The transaction as netlink messages, or None where nft must do it."""
        if not self.use_netlink:
            return None
        compiler = self._compiler()
        try:
            for line in tx.lines:
                compiler.command(line)
        except netlink.Unsupported:
            return None
        return compiler.messages

    def _get_session(self) -> session.Session:
        if self._session is None:
            self._session = session.Session()
        return self._session

    def _send(self, tx: Tx, messages: list | session.Batch | None = None) -> str:
        if not self.use_netlink:
            messages = None  # encoded before a fallback to nft (below) switched netlink off
        elif messages is None:
            messages = self._compile(tx)
        if messages is not None:
            self._record(tx)
            try:
                if isinstance(messages, session.Batch):
                    self._get_session().send_batch(messages)
                else:
                    self._get_session().send(self.family, messages)
            except session.Refused as e:
                return self._fall_back_to_nft(tx, e)
            except OSError as e:
                raise ApplyError(f"the kernel refused the transaction: {e}; the previous rules stay "
                                 "in place and the next sync is a full one") from e
            self.netlink_batches += 1
            return "netlink"
        self._run(tx.text(), tx)
        return "nft"

    def _fall_back_to_nft(self, tx: Tx, refusal: OSError) -> str:
        """The kernel aborted our netlink batch (nothing applied). Send the same transaction
        through nft: if nft gets it in, this kernel disagrees with our encoder (another kernel
        version), so stay on nft from now on, slower on large tables but correct. If nft fails
        too, the transaction itself is wrong: report nft's own words."""
        try:
            self._run(tx.text(), tx)
        except ApplyError as e:
            raise ApplyError(f"{e} (through netlink: {refusal})") from e
        log.warning("nftables: the kernel refused svcproxy's netlink encoding of a transaction (%s) "
                    "but accepted the same from nft; using nft from now on (slower on large tables). "
                    "Please report this with `uname -r` and `nft -V`.", refusal)
        self.use_netlink = False
        return "nft"

    def _record(self, tx: Tx) -> None:
        """Keep the input of small transactions for tests and debugging (not 40 MB of a cold load)."""
        if len(tx.lines) <= RECORD_MAX_COMMANDS:
            self.transactions.append(tx.text())
        else:
            self.transactions.append(f"# {len(tx.lines)} commands, starting with:\n" + "\n".join(tx.lines[:20]) + "\n")

    def _run(self, text: str, tx: Tx | None = None) -> None:
        if tx is not None:
            self._record(tx)
        else:
            self.transactions.append(text)
        proc = subprocess.run([*self.nft, "-f", "-"], input=text, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ApplyError(f"nft refused the transaction ({text.count(chr(10))} commands): "
                             f"{_first_lines(proc.stderr)}; the previous rules stay in place and the "
                             "next sync is a full one")

    def _run_capture(self, argv: list[str]) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ApplyError(f"{' '.join(argv)} failed: {_first_lines(proc.stderr)}")
        return proc.stdout

    def _result(self, full: bool) -> SyncResult:
        kernel = self.kernel
        assert kernel is not None
        rules = sum(len(r) for r in kernel.chains.values() if r)
        elements = sum(len(v) for v in kernel.elements.values())
        return SyncResult(full=full, input_bytes=sum(len(t) for t in self.transactions),
                          rules={"rules": rules, "chains": len(kernel.chains), "elements": elements})


@dataclass
class _Chunk:
    """Per-service chains of consecutive services: to fill (new ones are also declared)."""

    fill: list[Chain] = field(default_factory=list)
    fresh: dict[str, None] = field(default_factory=dict)  # not in the kernel yet, in order
    new_sets: list[Container] = field(default_factory=list)


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


def _encodes(compiler: netlink.Compiler, lines: list[str]) -> bool:
    """Add the commands to compiler's messages; False (and nothing added) where only nft can."""
    mark = len(compiler.messages)
    try:
        for line in lines:
            compiler.command(line)
    except netlink.Unsupported:
        del compiler.messages[mark:]
        return False
    return True


def _without_vmap(chain: Chain) -> bool:
    return not any(" vmap { " in r for r in chain.rules)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection during a full sync: it allocates millions of objects that
    live on (rules, messages), and at 10,000 services the collector kept re-walking them all.
    What the sync leaves behind is collected as usual afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _first_lines(text: str, n: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[:n])


def remove_iptables_leftovers(cfg: NodeConfig) -> None:
    """Switching from iptables mode: remove its chains, as kube-proxy does at startup."""
    try:
        from ..iptables import IptablesDataplane  # type: ignore[attr-defined]
    except ImportError:
        log.warning("iptables mode is not available; its leftovers (if any) were not removed")
        return
    try:
        IptablesDataplane(cfg).cleanup()
    except Exception as e:  # leftovers must not stop this mode from working
        log.warning("could not remove iptables-mode leftovers: %s", e)
