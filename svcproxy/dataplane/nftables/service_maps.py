"""What one service port contributes to the table in the maps layout (--nftables-layout maps).

kube-proxy's layout puts a verdict in every endpoint change (a `goto endpoint-...` in the
numgen vmap), and nf_tables re-validates every chain reachable from the hooks on each such
commit: ~0.2-0.3 s at 10,000 services. Here a port's chains depend only on the Service, never
on its endpoints; endpoints are data:

- the service chain DNATs through an interval map: `dnat to numgen random mod 10000 offset O
  map @endpoints-tcp-N`. The shared maps (endpoints-tcp-0..63, -udp-0..15, -sctp-0..3,
  each declared while a port uses it) give each port a slot of 10,000 numbers (its offset O,
  from a hash of its name), split evenly over the chosen endpoints. A table holds at most 84
  such maps, not one per port: the kernel keeps a table's sets in a list that every new set
  and every rule naming a set walks, which cost 3.4 s at 10,000 maps (bench_set_floor.py). Ports whose slot collides with another port's get a map of their own
  (endpoints-<port>, `numgen random mod 1000000`), decided over the whole state (SlotIndex);
- no endpoints is an empty map (the DNAT does not happen) plus an element of the fixed
  reject-services / drop-services sets that fixed rules in the endpoint checks act on;
- hairpin (a pod reaching itself) is an element `ep . ep` of the fixed hairpin-endpoints set;
- ClientIP affinity: the service chain first DNATs through the client-affinity-<port> map
  (client address -> endpoint address, written by the packet path with a timeout); a new
  connection's endpoint is remembered after the DNAT, in the filter hooks, by the port's
  remember- chain (found through the affinity-services map by the connection's original
  destination), and only if it is one of the port's members- (its current endpoints). When an
  endpoint goes, the sync deletes the entries that point at it.

So adding, removing or flipping endpoints changes map and set elements only. The affinity map
holds addresses only (nft 1.0.6 cannot write an IPv6 address . port), so its DNAT names the
port: affinity ports whose endpoints listen on different ports, and affinity with a Local
traffic policy, keep kube-proxy's per-endpoint chains (service.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache

from ...config import NodeConfig
from ...state import EndpointInfo, ServicePortInfo, ServiceState, select_endpoints
from . import names
from .layout import (
    AFFINITY_NODEPORTS,
    AFFINITY_SERVICES,
    CLUSTER_IPS,
    DROP_NODEPORTS,
    DROP_SERVICES,
    FIREWALL_IPS,
    HAIRPIN,
    MARK_MASQ,
    REJECT_NODEPORTS,
    REJECT_SERVICES,
    SERVICE_IPS,
    SERVICE_NODEPORTS,
    SHARDS,
    SLOT,
    SLOTS,
    Chain,
    Container,
)
from .service import Block, Element, any_contains, local_match, service_block

RANGE = 1_000_000  # numgen's modulus in a port's own map: endpoint weights to a millionth


def ranges(count: int, modulus: int = RANGE, offset: int = 0) -> list[str]:
    """offset..offset+modulus-1 split into count contiguous, near-equal ranges ("a-b", inclusive)."""
    if not count:
        return []
    bounds = [offset + i * modulus // count for i in range(count + 1)]
    return [f"{bounds[i]}-{bounds[i + 1] - 1}" for i in range(count)]


def endpoint_elements(map_name: str, endpoints: tuple[EndpointInfo, ...], modulus: int = RANGE,
                      offset: int = 0, label: str = "") -> list[Element]:
    # ordered by address so that a change moves as few ranges as possible in the listing
    eps = sorted(endpoints, key=lambda e: (e.ip, e.port))
    return [Element(map_name, r, f"{ep.ip} . {ep.port}", comment=label)
            for r, ep in zip(ranges(len(eps), modulus, offset), eps, strict=True)]


@lru_cache(maxsize=131072)
def slot_of(map_key: str) -> tuple[str, int]:
    """(protocol, slot among its shared maps' SHARDS[protocol] * SLOTS) of a port, from the name
    of its own map ("endpoints-HASH-ns/name/tcp/port": the protocol is the third part)."""
    proto = map_key.split("/")[2]
    return proto, int.from_bytes(hashlib.sha256(map_key.encode()).digest()[:8], "big") % (SHARDS[proto] * SLOTS)


@lru_cache(maxsize=1024)
def shared_map(family: str, name: str) -> Container:
    """The declaration of a shared endpoint map, "endpoints-tcp-7" (the protocol is in the name)."""
    proto = name.split("-")[1]
    return Container(name, f"numgen random mod {SLOT}", f"{family} daddr . {proto} dport", flags="interval",
                     typeof=True, comment=f"endpoint ranges of {proto.upper()} service ports")


def placement(map_key: str) -> tuple[str, int]:
    """(shared map, numgen offset) of a port's slot."""
    proto, n = slot_of(map_key)
    shard, slot = divmod(n, SLOTS)
    return names.shared_endpoints_map(proto, shard), slot * SLOT


def map_keys(svc: ServiceState) -> Iterable[str]:
    """The endpoint maps a service's ports may use (their own maps' names), whatever the
    endpoints: the keys whose slots the SlotIndex tracks."""
    for port in svc.ports:
        base = names.port_base(port.name)
        yield names.ENDPOINTS + base
        if port.uses_local_endpoints:
            yield names.LOCAL_ENDPOINTS + base


class SlotIndex:
    """Which ports claim each slot of the shared maps, over the whole state. A slot claimed
    twice is used by neither: both ports get maps of their own. So a port's rules are a pure
    function of the state, and a new port can move an existing one to its own map (rare: 1 in
    ~2,700 new ports at 10,000 TCP ports)."""

    def __init__(self) -> None:
        self.claims: dict[tuple[str, int], dict[str, str]] = {}  # slot -> map key -> service key
        self.keys: dict[str, tuple[str, ...]] = {}  # service key -> its map keys

    def rebuild(self, services: Iterable[ServiceState]) -> None:
        self.claims, self.keys = {}, {}
        for svc in services:
            self._claim(svc.key, tuple(map_keys(svc)))

    def update(self, services: dict[str, ServiceState | None]) -> set[str]:
        """Claims of these services replaced (None: gone); returns the other services whose
        ports moved between a shared slot and a map of their own."""
        touched: dict[tuple[str, int], bool] = {}  # slot -> collided before
        for key, svc in services.items():
            new = tuple(map_keys(svc)) if svc is not None else ()
            old = self.keys.get(key, ())
            if new == old:
                continue
            for mk in old + new:
                slot = slot_of(mk)
                touched.setdefault(slot, len(self.claims.get(slot, ())) > 1)
            self._release(key, old)
            self._claim(key, new)
        moved: set[str] = set()
        for slot, before in touched.items():
            claimants = self.claims.get(slot, {})
            if before != (len(claimants) > 1):
                moved.update(claimants.values())
        return moved - set(services)

    def own_maps(self, key: str) -> frozenset[str]:
        """Map keys of this service whose slot another port also claims."""
        return frozenset(mk for mk in self.keys.get(key, ()) if len(self.claims.get(slot_of(mk), ())) > 1)

    def _claim(self, key: str, mks: tuple[str, ...]) -> None:
        if mks:
            self.keys[key] = mks
        for mk in mks:
            self.claims.setdefault(slot_of(mk), {})[mk] = key

    def _release(self, key: str, mks: tuple[str, ...]) -> None:
        self.keys.pop(key, None)
        for mk in mks:
            slot = slot_of(mk)
            claimants = self.claims.get(slot, {})
            claimants.pop(mk, None)
            if not claimants:
                self.claims.pop(slot, None)


def endpoints_map(family: str, name: str, proto: str = "") -> Container:
    """The declaration of an endpoint map; the protocol is read from its name when not given
    (found in the kernel at startup: "endpoints-HASH-ns/name/tcp/port")."""
    if not proto:
        parts = name.split("/")
        proto = parts[2] if len(parts) > 3 and parts[2] in ("tcp", "udp", "sctp") else "tcp"
    return Container(name, f"numgen random mod {RANGE}", f"{family} daddr . {proto} dport",
                     flags="interval", typeof=True)


def affinity_port(port: ServicePortInfo, endpoints: tuple[EndpointInfo, ...]) -> int | None:
    """The one port every endpoint listens on (the DNAT port of the affinity map), or None
    where the maps layout cannot express this port's affinity."""
    if port.uses_local_endpoints:
        return None
    ports = {ep.port for ep in endpoints}
    if len(ports) > 1:
        return None
    if ports:
        return ports.pop()
    return port.target_port if isinstance(port.target_port, int) and port.target_port else port.port


def affinity_map(family: str, name: str, timeout: int) -> Container:
    return Container(name, f"{family} saddr", f"{family} daddr", flags="dynamic,timeout", timeout=timeout,
                     typeof=True)


def members_set(family: str, name: str, proto: str = "") -> Container:
    if not proto:  # found in the kernel: the protocol is in the name
        parts = name.split("/")
        proto = parts[2] if len(parts) > 3 and parts[2] in ("tcp", "udp", "sctp") else "tcp"
    return Container(name, f"{family} daddr . {proto} dport", typeof=True)


def maps_block(port: ServicePortInfo, endpoints: tuple[EndpointInfo, ...], cfg: NodeConfig, zone: str,
               own_maps: frozenset[str] = frozenset()) -> Block:
    """own_maps: the port's endpoint maps (by name) whose shared slot collides (SlotIndex)."""
    affinity = port.session_affinity_timeout
    dnat_port = affinity_port(port, endpoints) if affinity else None
    if affinity and dnat_port is None:
        return service_block(port, endpoints, cfg, zone)
    sel = select_endpoints(port, endpoints, cfg, zone)
    ip = names.family_keyword(cfg.ip_family)
    proto = port.protocol.lower()
    label = str(port.name)
    base = names.port_base(port.name)
    cluster_chain, local_chain = names.SERVICE + base, names.LOCAL + base
    external_chain, firewall_chain = names.EXTERNAL + base, names.FIREWALL + base
    cluster_map, local_map = names.ENDPOINTS + base, names.LOCAL_ENDPOINTS + base
    internal_chain = local_chain if port.internal_policy_local else cluster_chain
    has_endpoints = sel.has_any
    has_internal = bool(sel.local) if port.internal_policy_local else has_endpoints
    has_external = bool(sel.local) if port.external_policy_local else has_endpoints

    def key(addr: str) -> str:
        return f"{addr} . {proto} . {port.port}"

    # dispatch: while the Service exists, whatever its endpoints
    elements = [Element(CLUSTER_IPS, port.cluster_ip), Element(SERVICE_IPS, key(port.cluster_ip), f"goto {internal_chain}")]
    external = [*port.external_ips, *port.load_balancer_ips] if port.externally_accessible else []
    elements += [Element(SERVICE_IPS, key(a), f"goto {external_chain}") for a in external]
    uses_firewall = bool(port.load_balancer_ips and port.load_balancer_source_ranges)
    if uses_firewall:
        elements += [Element(FIREWALL_IPS, key(lb), f"goto {firewall_chain}") for lb in port.load_balancer_ips]
    if port.node_port:
        elements.append(Element(SERVICE_NODEPORTS, f"{proto} . {port.node_port}", f"goto {external_chain}"))

    # no endpoints (reject) or no local ones for a Local policy (drop): data for fixed rules
    if not has_endpoints:
        elements += [Element(REJECT_SERVICES, key(a), comment=label) for a in (port.cluster_ip, *external)]
        if port.node_port:
            elements.append(Element(REJECT_NODEPORTS, f"{proto} . {port.node_port}", comment=label))
    else:
        if not has_internal:
            elements.append(Element(DROP_SERVICES, key(port.cluster_ip), comment=label))
        if not has_external:
            elements += [Element(DROP_SERVICES, key(a), comment=label) for a in external]
            if port.node_port:
                elements.append(Element(DROP_NODEPORTS, f"{proto} . {port.node_port}", comment=label))

    # the endpoints: data of the per-port maps, and hairpin pairs
    elements += [Element(HAIRPIN, f"{ep.ip} . {ep.ip}") for ep in sel.all_reachable]
    maps: list[Container] = []
    chains: list[Chain] = []

    def policy_chain(name: str, map_name: str, eps: tuple[EndpointInfo, ...]) -> Chain:
        if map_name in own_maps:
            maps.append(endpoints_map(ip, map_name, proto))
            elements.extend(endpoint_elements(map_name, eps))
            choose = f"numgen random mod {RANGE} map @{map_name}"
        else:
            shared, offset = placement(map_name)
            maps.append(shared_map(ip, shared))
            tag = label if name == cluster_chain else f"{label} local"
            elements.extend(endpoint_elements(shared, eps, SLOT, offset, tag))
            choose = f"numgen random mod {SLOT}{f' offset {offset}' if offset else ''} map @{shared}"
        rules: list[str] = []
        if name == internal_chain:
            if cfg.masquerade_all:
                rules.append(f"{ip} daddr {port.cluster_ip} {proto} dport {port.port} jump {MARK_MASQ}")
            elif (not_local := local_match(cfg, negate=True)):
                rules.append(f"{ip} daddr {port.cluster_ip} {proto} dport {port.port} {not_local} jump {MARK_MASQ}")
        if affinity:  # a client seen before goes to the endpoint it went to
            rules.append(f"meta l4proto {proto} dnat {ip} to {ip} saddr map @{aff_map} : {dnat_port}")
        rules.append(f"meta l4proto {proto} dnat {ip} to {choose}")
        return Chain(name, tuple(rules))

    if affinity:
        aff_map, members = names.CLIENT_AFFINITY + base, names.MEMBERS + base
        remember = names.REMEMBER + base
        maps += [affinity_map(ip, aff_map, affinity), members_set(ip, members, proto)]
        elements += [Element(members, f"{ep.ip} . {ep.port}") for ep in sel.cluster]
        elements += [Element(AFFINITY_SERVICES, key(a), f"goto {remember}") for a in (port.cluster_ip, *external)]
        if port.node_port:
            elements.append(Element(AFFINITY_NODEPORTS, f"{proto} . {port.node_port}", f"goto {remember}"))
        chains.append(Chain(remember, (f"{ip} daddr . {proto} dport @{members} "
                                       f"update @{aff_map} {{ {ip} saddr : {ip} daddr }}",)))

    if port.uses_cluster_endpoints:
        chains.append(policy_chain(cluster_chain, cluster_map, sel.cluster))
    if port.uses_local_endpoints:
        chains.append(policy_chain(local_chain, local_map, sel.local))
    if port.externally_accessible:
        rules = []
        if not port.external_policy_local:
            rules.append(f"jump {MARK_MASQ}")
        else:
            if (is_local := local_match(cfg, negate=False)):
                rules.append(f'{is_local} goto {cluster_chain} comment "short-circuit pod traffic"')
            rules.append(f'fib saddr type local jump {MARK_MASQ} comment "masquerade local traffic"')
            rules.append(f'fib saddr type local goto {cluster_chain} comment "short-circuit local traffic"')
        rules.append(f"goto {local_chain if port.external_policy_local else cluster_chain}")
        chains.append(Chain(external_chain, tuple(rules)))
    if uses_firewall:
        sources = list(port.load_balancer_source_ranges)
        if cfg.primary_ip and any_contains(sources, cfg.primary_ip):
            sources += port.load_balancer_ips
        chains.append(Chain(firewall_chain, (f"{ip} saddr != {{ {', '.join(sources)} }} drop",)))
    return Block(tuple(chains), tuple(maps), tuple(elements))
