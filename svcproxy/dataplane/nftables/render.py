"""`nft -f` input for the kube-proxy table: a pure function of (ProxyState, NodeConfig).

The text is the table in the block form `nft list table` prints, so it reads the same as the
kernel's listing. Per-service blocks are cached (BlockCache) so that re-rendering a large state
after a small change costs little.
"""

from __future__ import annotations

from collections.abc import Iterable

from ...config import NodeConfig
from ...state import ProxyState, ServicePortInfo
from . import names
from .layout import NODEPORT_IPS, TABLE_COMMENT, Chain, Container, containers, fixed_chains, nodeport_set_ips
from .service import Block, Element, service_block


class BlockCache:
    """service_block() results keyed by their inputs; keeps only what the last render used."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self._blocks: dict[tuple, Block] = {}

    def blocks(self, state: ProxyState, ports: Iterable[ServicePortInfo] | None = None) -> list[Block]:
        """Blocks for the given ports (default: all of state's ports), in order."""
        old, new = self._blocks, {}
        out = []
        for port in state.ports if ports is None else ports:
            key = (port, state.endpoints(port.name), state.zone)
            block = old.get(key)
            if block is None:
                block = service_block(port, key[1], self.cfg, state.zone)
            new[key] = block
            out.append(block)
        if ports is None:
            self._blocks = new
        else:
            self._blocks.update(new)
        return out


_caches: dict[NodeConfig, BlockCache] = {}


def cache_for(cfg: NodeConfig) -> BlockCache:
    cache = _caches.get(cfg)
    if cache is None:
        _caches.clear()  # one node config at a time in practice; don't grow without bound
        cache = _caches[cfg] = BlockCache(cfg)
    return cache


def element_text(el: Element) -> str:
    comment = f' comment "{el.comment}"' if el.comment else ""
    return f"{el.key}{comment} : {el.value}" if el.value else f"{el.key}{comment}"


def unique_elements(blocks: Iterable[Block]) -> dict[str, dict[str, Element]]:
    """Elements per container, first writer wins on a duplicate key (two services claiming the
    same address and port: kube-proxy too programs only one of them)."""
    out: dict[str, dict[str, Element]] = {}
    for block in blocks:
        for el in block.elements:
            out.setdefault(el.container, {}).setdefault(el.key, el)
    return out


def static_elements(cfg: NodeConfig) -> list[Element]:
    return [Element(NODEPORT_IPS, ip) for ip in nodeport_set_ips(cfg) or ()]


def chain_text(chain: Chain, indent: str = "\t") -> list[str]:
    lines = [f"{indent}chain {chain.name} {{"]
    if chain.hook:
        lines.append(f"{indent}\t{chain.hook}")
    if chain.comment:
        lines.append(f'{indent}\tcomment "{chain.comment}"')
    lines += [f"{indent}\t{r}" for r in chain.rules]
    lines.append(f"{indent}}}")
    return lines


def container_text(c: Container, elements: Iterable[Element], indent: str = "\t") -> list[str]:
    lines = [f"{indent}{c.kind} {c.name} {{"]
    lines += [f"{indent}\t{part}" for part in c.spec()]
    items = [element_text(e) for e in elements]
    if items:
        lines.append(f"{indent}\telements = {{ " + f",\n{indent}\t\t     ".join(items) + " }")
    lines.append(f"{indent}}}")
    return lines


def render_blocks(cfg: NodeConfig, blocks: list[Block]) -> str:
    family = names.family_keyword(cfg.ip_family)
    elements = unique_elements(blocks)
    for el in static_elements(cfg):
        elements.setdefault(el.container, {})[el.key] = el
    lines = [f"table {family} {names.TABLE} {{", f'\tcomment "{TABLE_COMMENT}"']
    for c in containers(cfg):
        lines += container_text(c, sorted(elements.get(c.name, {}).values(), key=_element_order))
    seen_sets: set[str] = set()
    for block in blocks:
        for s in block.sets:
            if s.name not in seen_sets:
                seen_sets.add(s.name)
                lines += container_text(s, ())
    for chain in fixed_chains(cfg):
        lines += chain_text(chain)
    seen_chains: set[str] = set()
    for block in blocks:
        for chain in block.chains:
            if chain.name not in seen_chains:
                seen_chains.add(chain.name)
                lines += chain_text(chain)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _element_order(el: Element) -> tuple:
    return (el.key, el.value)


def render_ruleset(state: ProxyState, cfg: NodeConfig) -> str:
    """The whole kube-proxy table for this node, as `nft -f` input (deterministic)."""
    return render_blocks(cfg, cache_for(cfg).blocks(state))
