"""An in-memory kube-proxy table that takes a transaction (commands.Tx) the way nf_tables does,
so that the planners and the dataplane can be tested without root.

Like the kernel, it applies a transaction's commands in order and keeps the result only if
every command was accepted, and it refuses what nf_tables refuses, with its words: a missing
table, chain, set or element (ENOENT); deleting a chain that a rule or map element still jumps
to, or a set a rule still uses (EBUSY; a chain's own rules go with it); declaring an existing
set with another type or flags, re-adding a key with other data, overlapping ranges (EEXIST);
data in a plain set, a jump to a base chain (EINVAL/EOPNOTSUPP). The kernel tests stay the
proof; this is the model they check (tests/nftables/test_fake_kernel.py runs both on the same
transactions).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace

from ...config import NodeConfig
from ..protocol import ApplyError
from . import commands as cmd
from . import names
from .commands import AddTable, Command, Tx
from .kernel import holding, record
from .layout import Chain, Container, Hook
from .render import chain_text, container_text
from .service import Element
from .transaction import Kernel

_TARGET = re.compile(r"\b(?:jump|goto) ([^\s,{}]+)")
_SET_REF = re.compile(r"@([^\s,{}]+)")
_RANGE = re.compile(r"(\d+)-(\d+)")


class Refused(ApplyError):
    """The fake kernel refused a transaction (nothing of it was applied)."""


@dataclass
class FakeChain:
    hook: Hook | None = None
    comment: str = ""
    rules: list[str] = field(default_factory=list)


@dataclass
class FakeSet:
    container: Container
    elements: dict[str, Element] = field(default_factory=dict)


@dataclass
class Table:
    """What the kernel's table holds, in creation order (as `nft list` prints it)."""

    comment: str = ""
    chains: dict[str, FakeChain] = field(default_factory=dict)
    sets: dict[str, FakeSet] = field(default_factory=dict)

    def chain_users(self, name: str) -> list[str]:
        """Rules and map elements that jump or go to this chain (its kernel use count)."""
        users = [f"a rule in {c}" for c, chain in self.chains.items()
                 for r in chain.rules if name in _TARGET.findall(r)]
        users += [f"an element of {s}" for s, fs in self.sets.items()
                  for e in fs.elements.values() if name in _TARGET.findall(e.value)]
        return users

    def set_users(self, name: str) -> list[str]:
        return [c for c, chain in self.chains.items() for r in chain.rules if name in _SET_REF.findall(r)]


class FakeKernel:
    """A Driver (kernel.py) over an in-memory table of one family."""

    use_netlink = False  # nothing to encode: commands are applied as they are

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.family = names.family_keyword(cfg.ip_family)
        self.table: Table | None = None
        self.timings: list[tuple[str, int, float]] = []
        self.transactions: list[str] = []
        self.applied = 0  # transactions taken (for tests)
        self.learned: dict[str, list[tuple[str, str]]] = {}  # affinity map -> what the packet path wrote

    # --- the Driver protocol --------------------------------------------------------------

    def run_tx(self, tx: Tx, messages: object = None) -> None:
        if not tx:
            return
        self.transactions.append(record(tx))
        self.timings.append(("fake", len(tx), 0.0))
        table = copy.deepcopy(self.table)
        for n, command in enumerate(tx, 1):
            try:
                table = _apply(table, command)
            except _Error as e:
                raise Refused(f"the kernel refused the transaction ({len(tx)} commands): command {n} "
                              f"`{command.text(tx.prefix)}`: {e}; the previous rules stay in place "
                              "and the next sync is a full one") from None
        self.table = table
        self.applied += 1

    def compile(self, tx: Tx) -> None:
        return None

    def compiler(self):  # noqa: ANN201 - never called: use_netlink is False
        raise NotImplementedError("the fake kernel takes commands, not netlink")

    netlink_session = compiler

    def read_kernel(self) -> Kernel:
        t = self.table
        if t is None:
            return Kernel()
        return holding(self.family, True, t.chains, ((n, s.container.timeout) for n, s in t.sets.items()))

    def rule_counts(self) -> dict[str, int] | None:
        return None if self.table is None else {n: len(c.rules) for n, c in self.table.chains.items()}

    def affinity_entries(self, name: str) -> list[tuple[str, str]]:
        if self.table is None or name not in self.table.sets:
            raise Refused(f"could not read map {name}: No such file or directory")
        return list(self.learned.get(name, []))

    def delete_table(self, family: str) -> None:
        if family == self.family:
            self.table = None

    # --- for tests --------------------------------------------------------------------------

    def listing(self) -> str:
        """The table in `nft list table` form, in creation order."""
        if self.table is None:
            return ""
        lines = [f"table {self.family} {names.TABLE} {{", f'\tcomment "{self.table.comment}"']
        for s in self.table.sets.values():
            lines += container_text(s.container, s.elements.values())
        for name, c in self.table.chains.items():
            lines += chain_text(Chain(name, tuple(c.rules), c.hook, c.comment))
        return "\n".join(lines + ["}"]) + "\n"


class _Error(Exception):
    """One command refused, in the kernel's words."""


def _apply(table: Table | None, command: Command) -> Table:
    """The table after one command (changed in place, except a new table)."""
    if isinstance(command, AddTable):
        if table is None:
            return Table(command.comment)
        return table
    if table is None:
        raise _Error("No such file or directory (no table)")
    match command:
        case cmd.AddChain(chain):
            _add_chain(table, chain)
        case cmd.FlushChain(name):
            _chain(table, name).rules.clear()
        case cmd.DeleteChain(name):
            _delete_chain(table, name)
        case cmd.AddRule(chain, rule):
            _add_rule(table, chain, rule)
        case cmd.AddContainer(container):
            _add_container(table, container)
        case cmd.FlushContainer(kind, name):
            _set(table, name, kind).elements.clear()
        case cmd.DeleteContainer(kind, name):
            _set(table, name, kind)
            if users := table.set_users(name):
                raise _Error(f"Device or resource busy ({name} is used by chain {users[0]})")
            del table.sets[name]
        case cmd.AddElements(container, elements):
            _add_elements(table, container, elements)
        case cmd.DeleteElements(container, keys):
            s = _set(table, container)
            for key in keys:
                if s.elements.pop(key, None) is None:
                    raise _Error(f"No such file or directory (no element {key} in {container})")
    return table


def _chain(table: Table, name: str) -> FakeChain:
    chain = table.chains.get(name)
    if chain is None:
        raise _Error(f"No such file or directory (no chain {name})")
    return chain


def _set(table: Table, name: str, kind: str = "") -> FakeSet:
    """A set or map by name (and of this kind, when given: flush and delete name it)."""
    s = table.sets.get(name)
    if s is None or (kind and s.container.kind != kind):
        raise _Error(f"No such file or directory (no {kind or 'set or map'} {name})")
    return s


def _add_chain(table: Table, chain: Chain) -> None:
    found = table.chains.get(chain.name)
    if found is None:
        table.chains[chain.name] = FakeChain(chain.hook, chain.comment)
    elif chain.hook is not None and found.hook != chain.hook:  # without a hook: a no-op
        raise _Error(f"Operation not supported (chain {chain.name} exists with another hook)")


def _delete_chain(table: Table, name: str) -> None:
    _chain(table, name)  # its own rules go with it (nft and netlink alike)
    if users := table.chain_users(name):
        raise _Error(f"Device or resource busy (chain {name} is used by {users[0]})")
    del table.chains[name]


def _add_rule(table: Table, name: str, rule: str) -> None:
    chain = _chain(table, name)
    for target in _TARGET.findall(rule):
        _check_target(table, target)
    for ref in _SET_REF.findall(rule):
        if ref not in table.sets:
            raise _Error(f"No such file or directory (no set {ref})")
    chain.rules.append(rule)


def _check_target(table: Table, target: str) -> None:
    found = table.chains.get(target)
    if found is None:
        raise _Error(f"No such file or directory (no chain {target})")
    if found.hook is not None:
        raise _Error(f"Operation not supported (a jump to base chain {target})")


def _add_container(table: Table, c: Container) -> None:
    found = table.sets.get(c.name)
    if found is None:
        table.sets[c.name] = FakeSet(c)
        return
    old = found.container
    if (old.kind, old.key_type, old.value_type, old.flags, old.typeof) != (c.kind, c.key_type, c.value_type,
                                                                           c.flags, c.typeof):
        raise _Error(f"File exists ({old.kind} {c.name} is declared with another type or flags)")
    found.container = replace(old, timeout=c.timeout)  # the kernel takes a new timeout, keeps the comment


def _add_elements(table: Table, name: str, elements: tuple[Element, ...]) -> None:
    s = _set(table, name)
    is_map = bool(s.container.value_type)
    for e in elements:
        if bool(e.value) != is_map:
            raise _Error(f"Invalid argument ({e.key}: {'no data for map' if is_map else 'data in set'} {name})")
        if s.container.value_type == "verdict":
            for target in _TARGET.findall(e.value):
                _check_target(table, target)
        found = s.elements.get(e.key)
        if found is not None:
            if found.value != e.value:
                raise _Error(f"File exists ({e.key} in {name} maps to {found.value})")
            continue
        if "interval" in s.container.flags.split(","):
            _check_overlap(s, e.key, name)
        s.elements[e.key] = e


def _check_overlap(s: FakeSet, key: str, name: str) -> None:
    m = _RANGE.fullmatch(key)
    if m is None:
        return
    lo, hi = int(m.group(1)), int(m.group(2))
    for other in s.elements:
        o = _RANGE.fullmatch(other)
        if o and int(o.group(1)) <= hi and lo <= int(o.group(2)):
            raise _Error(f"File exists ({key} overlaps {other} in {name})")
