"""`nft -f` input for the kube-proxy table: a pure function of (ProxyState, NodeConfig).

The text is the table in the block form `nft list table` prints, so it reads the same as the
kernel's listing. Per-service blocks are cached (BlockCache) so that re-rendering a large state
after a small change costs little.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ...config import NodeConfig
from ...state import ProxyState, ServiceState
from . import names
from .layout import NODEPORT_IPS, TABLE_COMMENT, Chain, Container, containers, fixed_chains, nodeport_set_ips
from .service import Block, Element, service_block
from .service_maps import SlotIndex, maps_block


@dataclass
class ServiceRules:
    """One Service's share of the table (all its ports), with its text pre-rendered."""

    service: ServiceState
    zone: str
    blocks: list[Block]
    chains: dict[str, Chain]  # per-service chains by name, in order
    sets: dict[str, Container]  # affinity sets and endpoint maps by name
    elements: list[Element]
    own_maps: frozenset[str] = frozenset()  # maps layout: endpoint maps of its own (a collided slot)
    _text: tuple[str, str] | None = None

    @property
    def chains_text(self) -> str:
        return self.text()[0]

    @property
    def sets_text(self) -> str:
        return self.text()[1]

    def text(self) -> tuple[str, str]:
        """The chains and sets in `nft list` form, rendered once on first use (render only)."""
        if self._text is None:
            lines: list[str] = []
            for c in self.chains.values():
                lines += chain_text(c)
            set_lines: list[str] = []
            own = unique_elements(e for e in self.elements if e.container in self.sets)  # endpoint maps
            for c in self.sets.values():
                if not names.is_shared_endpoints_map(c.name):  # those are rendered once, for all
                    set_lines += container_text(c, own.get(c.name, {}).values())
            self._text = ("\n".join(lines), "\n".join(set_lines))
        return self._text


class BlockCache:
    """ServiceRules per service key, reused while the ServiceState (and zone) is unchanged.

    In the maps layout a port's rules also depend on whether its shared-map slot collides with
    another port's (slots): claim() the state's services before rendering them."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self._rules: dict[str, ServiceRules] = {}
        self.maps = cfg.nftables_layout == "maps"
        self.slots = SlotIndex()

    def claim(self, state: ProxyState, changed: Iterable[str] | None = None) -> set[str]:
        """Record the slots the services claim (all of them, or the changed ones); returns the
        other services whose rules change with it (their slot collides now, or no longer)."""
        if not self.maps:
            return set()
        if changed is None:
            self.slots.rebuild(state.services.values())
            return set()
        return self.slots.update({k: state.services.get(k) for k in changed})

    def service(self, svc: ServiceState, zone: str) -> ServiceRules:
        old = self._rules.get(svc.key)
        own = self.slots.own_maps(svc.key) if self.maps else frozenset()
        if old is not None and old.zone == zone and old.own_maps == own and (old.service is svc or old.service == svc):
            return old
        ports = sorted(svc.ports, key=lambda p: p.name)
        if self.maps:
            blocks = [maps_block(p, svc.endpoints.get(p.name, ()), self.cfg, zone, own) for p in ports]
        else:
            blocks = [service_block(p, svc.endpoints.get(p.name, ()), self.cfg, zone) for p in ports]
        chains = {c.name: c for b in blocks for c in b.chains}
        sets = {s.name: s for b in blocks for s in b.sets}
        rules = ServiceRules(svc, zone, blocks, chains, sets, [e for b in blocks for e in b.elements], own)
        self._rules[svc.key] = rules
        return rules

    def all(self, state: ProxyState) -> list[ServiceRules]:
        """Rules of every service in state, in port-name order; forgets services no longer there."""
        self.claim(state)
        out = [self.service(state.services[k], state.zone) for k in sorted(state.services, key=service_order)]
        if len(self._rules) != len(out):
            self._rules = {r.service.key: r for r in out}
        return out


def service_order(key: str) -> tuple[str, ...]:
    return tuple(key.split("/", 1))


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


def unique_elements(elements: Iterable[Element]) -> dict[str, dict[str, Element]]:
    """Elements per container, first writer wins on a duplicate key (two services claiming the
    same address and port: kube-proxy too programs only one of them)."""
    out: dict[str, dict[str, Element]] = {}
    for el in elements:
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


def render_rules(cfg: NodeConfig, services: list[ServiceRules], service_cidrs: tuple[str, ...] = ()) -> str:
    family = names.family_keyword(cfg.ip_family)
    elements = unique_elements(e for r in services for e in r.elements)
    for el in static_elements(cfg):
        elements.setdefault(el.container, {})[el.key] = el
    lines = [f"table {family} {names.TABLE} {{", f'\tcomment "{TABLE_COMMENT}"']
    for c in containers(cfg):
        lines += container_text(c, sorted(elements.get(c.name, {}).values(), key=_element_order))
    shared = {name: c for r in services for name, c in r.sets.items() if names.is_shared_endpoints_map(name)}
    for name in sorted(shared, key=_shared_order):
        lines += container_text(shared[name], sorted(elements.get(name, {}).values(), key=_range_start))
    lines += [r.sets_text for r in services if r.sets_text]
    for chain in fixed_chains(cfg, service_cidrs):
        lines += chain_text(chain)
    lines += [r.chains_text for r in services if r.chains_text]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _element_order(el: Element) -> tuple:
    return (el.key, el.value)


def render_ruleset(state: ProxyState, cfg: NodeConfig) -> str:
    """The whole kube-proxy table for this node, as `nft -f` input (deterministic)."""
    return render_rules(cfg, cache_for(cfg).all(state), state.service_cidrs)


def _shared_order(name: str) -> tuple[str, int]:
    """endpoints-tcp-2 before endpoints-tcp-10."""
    proto, _, shard = name[len(names.ENDPOINTS):].partition("-")
    return proto, int(shard)


def _range_start(el: Element) -> int:
    return int(el.key.split("-")[0])
