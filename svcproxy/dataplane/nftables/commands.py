"""One nftables transaction as data: typed commands on the kube-proxy table (in the spirit of
knftables' Transaction), built by the planners (transaction.py, pipeline.py).

The same objects are written out as `nft -f` text (Tx.text: what nft runs, what
`nft monitor` shows, what tests read), encoded to netlink (netlink.Compiler) and applied to an
in-memory table (fake.py), so nothing reads our own text back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

from ...config import NodeConfig
from . import names
from .layout import Chain, Container
from .render import element_text
from .service import Element

ELEMENTS_PER_COMMAND = 1000  # nft text lines stay readable; netlink splits by size anyway


@dataclass(slots=True)
class AddTable:
    comment: str

    def text(self, prefix: str) -> str:
        return f'add table {prefix} {{ comment "{self.comment}"; }}'


@dataclass(slots=True)
class AddChain:
    """Create a chain if it does not exist (a base chain with its hook); its rules are AddRules."""

    chain: Chain

    def text(self, prefix: str) -> str:
        extra = [str(self.chain.hook)] if self.chain.hook else []
        if self.chain.comment:
            extra.append(f'comment "{self.chain.comment}";')
        return f"add chain {prefix} {self.chain.name}" + (f" {{ {' '.join(extra)} }}" if extra else "")


@dataclass(slots=True)
class _OnChain:
    """A verb on a chain, by name."""

    name: str
    verb: ClassVar[str] = ""

    def text(self, prefix: str) -> str:
        return f"{self.verb} chain {prefix} {self.name}"


class FlushChain(_OnChain):
    """Remove a chain's rules."""

    __slots__ = ()
    verb = "flush"


class DeleteChain(_OnChain):
    """Remove a chain, its own rules with it (refused while a rule or element jumps to it)."""

    __slots__ = ()
    verb = "delete"


@dataclass(slots=True)
class AddRule:
    """Append a rule (its statements as nft writes them) to a chain."""

    chain: str
    rule: str

    def text(self, prefix: str) -> str:
        return f"add rule {prefix} {self.chain} {self.rule}"


@dataclass(slots=True)
class AddContainer:
    """Declare a set or map if it does not exist (the kernel refuses a different declaration)."""

    container: Container

    def text(self, prefix: str) -> str:
        c = self.container
        return f"add {c.kind} {prefix} {c.name} {{ {'; '.join(c.spec())}; }}"


@dataclass(slots=True)
class _OnContainer:
    """A verb on a set or map, by name."""

    kind: str  # "set" or "map"
    name: str
    verb: ClassVar[str] = ""

    def text(self, prefix: str) -> str:
        return f"{self.verb} {self.kind} {prefix} {self.name}"


class FlushContainer(_OnContainer):
    """Remove every element."""

    __slots__ = ()
    verb = "flush"


class DeleteContainer(_OnContainer):
    """Remove a set or map (refused while a rule uses it)."""

    __slots__ = ()
    verb = "delete"


@dataclass(slots=True)
class AddElements:
    container: str
    elements: tuple[Element, ...]

    def text(self, prefix: str) -> str:
        return f"add element {prefix} {self.container} {{ {', '.join(map(element_text, self.elements))} }}"


@dataclass(slots=True)
class DeleteElements:
    container: str
    keys: tuple[str, ...]

    def text(self, prefix: str) -> str:
        return f"delete element {prefix} {self.container} {{ {', '.join(self.keys)} }}"


Command = (AddTable | AddChain | FlushChain | DeleteChain | AddRule | AddContainer | FlushContainer
           | DeleteContainer | AddElements | DeleteElements)


class Tx:
    """The commands of one transaction of the kube-proxy table of one family, in order."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.family = names.family_keyword(cfg.ip_family)
        self.prefix = f"{self.family} {names.TABLE}"
        self.commands: list[Command] = []

    def __bool__(self) -> bool:
        return bool(self.commands)

    def __len__(self) -> int:
        return len(self.commands)

    def __iter__(self) -> Iterator[Command]:
        return iter(self.commands)

    def lines(self, limit: int | None = None) -> list[str]:
        """The commands as nft text, one per line (the first `limit` only)."""
        return [c.text(self.prefix) for c in self.commands[:limit]]

    def text(self) -> str:
        """`nft -f` input."""
        return "\n".join(self.lines()) + "\n" if self.commands else ""

    def extend(self, commands: Iterable[Command]) -> None:
        self.commands.extend(commands)

    def add_table(self) -> None:
        self.commands.append(AddTable(names.TABLE_COMMENT_TEXT))

    def add_container(self, c: Container) -> None:
        self.commands.append(AddContainer(c))

    def add_chain(self, chain: Chain) -> None:
        self.commands.append(AddChain(chain))

    def fill_chain(self, chain: Chain, flush: bool) -> None:
        if flush:
            self.commands.append(FlushChain(chain.name))
        self.commands += [AddRule(chain.name, rule) for rule in chain.rules]

    def flush_chains(self, chains: Iterable[str]) -> None:
        self.commands += map(FlushChain, chains)

    def delete_chains(self, chains: Iterable[str]) -> None:
        self.commands += map(DeleteChain, chains)

    def flush_container(self, kind: str, name: str) -> None:
        self.commands.append(FlushContainer(kind, name))

    def delete_set(self, name: str) -> None:
        self.commands.append(DeleteContainer(names.container_kind(name), name))

    def add_elements(self, container: str, elements: Iterable[Element]) -> None:
        items = tuple(elements)
        for i in range(0, len(items), ELEMENTS_PER_COMMAND):
            self.commands.append(AddElements(container, items[i:i + ELEMENTS_PER_COMMAND]))

    def delete_elements(self, container: str, keys: Iterable[str]) -> None:
        keys = tuple(keys)
        for i in range(0, len(keys), ELEMENTS_PER_COMMAND):
            self.commands.append(DeleteElements(container, keys[i:i + ELEMENTS_PER_COMMAND]))
