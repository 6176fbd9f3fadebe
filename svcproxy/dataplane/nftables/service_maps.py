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
from ...model.selection import Policy, port_policy
from ...state import EndpointInfo, ServicePortInfo, ServiceState
from . import names
from .layout import (
    AFFINITY_NODEPORTS,
    AFFINITY_SERVICES,
    CLUSTER_IPS,
    DROP_NODEPORTS,
    DROP_SERVICES,
    FIREWALL_IPS,
    HAIRPIN,
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
from .service import (
    Block,
    Element,
    PortChains,
    external_rules,
    firewall_chain,
    internal_masquerade,
    service_block,
    uses_firewall,
)

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
    dnat_port = affinity_port(port, endpoints) if port.session_affinity_timeout else None
    if port.session_affinity_timeout and dnat_port is None:
        return service_block(port, endpoints, cfg, zone)
    pol = port_policy(port, endpoints, cfg.hostname, zone)
    chains = PortChains.of(port)
    elements = _dispatch_elements(port, pol, chains)
    maps: list[Container] = []
    out: list[Chain] = []
    if dnat_port is not None:
        out.append(_affinity(port, pol, cfg, maps, elements))
    base = names.port_base(port.name)
    if port.uses_cluster_endpoints:
        out.append(_map_chain(port, chains.cluster, names.ENDPOINTS + base, pol.selection.cluster, chains, cfg,
                              own_maps, dnat_port, maps, elements))
    if port.uses_local_endpoints:
        out.append(_map_chain(port, chains.local, names.LOCAL_ENDPOINTS + base, pol.selection.local, chains, cfg,
                              own_maps, dnat_port, maps, elements))
    if port.externally_accessible:
        out.append(Chain(chains.external, (*external_rules(port, cfg, chains), f"goto {chains.external_policy(port)}")))
    if uses_firewall(port):
        out.append(firewall_chain(port, cfg, chains))
    return Block(tuple(out), tuple(maps), tuple(elements))


def _external_addresses(port: ServicePortInfo) -> list[str]:
    return [*port.external_ips, *port.load_balancer_ips] if port.externally_accessible else []


def _dispatch_elements(port: ServicePortInfo, pol: Policy[EndpointInfo], chains: PortChains) -> list[Element]:
    """While the Service exists, its addresses go to its chains whatever its endpoints; having
    none (reject), or no local one for a Local policy (drop), is data for fixed rules; and each
    endpoint is a hairpin pair."""
    proto = port.protocol.lower()
    label = str(port.name)

    def key(addr: str) -> str:
        return f"{addr} . {proto} . {port.port}"

    external = _external_addresses(port)
    out = [Element(CLUSTER_IPS, port.cluster_ip), Element(SERVICE_IPS, key(port.cluster_ip), f"goto {chains.internal(port)}")]
    out += [Element(SERVICE_IPS, key(a), f"goto {chains.external}") for a in external]
    if uses_firewall(port):
        out += [Element(FIREWALL_IPS, key(lb), f"goto {chains.firewall}") for lb in port.load_balancer_ips]
    if port.node_port:
        out.append(Element(SERVICE_NODEPORTS, f"{proto} . {port.node_port}", f"goto {chains.external}"))
    if not pol.has_endpoints:
        out += [Element(REJECT_SERVICES, key(a), comment=label) for a in (port.cluster_ip, *external)]
        if port.node_port:
            out.append(Element(REJECT_NODEPORTS, f"{proto} . {port.node_port}", comment=label))
    else:
        if not pol.has_internal:
            out.append(Element(DROP_SERVICES, key(port.cluster_ip), comment=label))
        if not pol.has_external:
            out += [Element(DROP_SERVICES, key(a), comment=label) for a in external]
            if port.node_port:
                out.append(Element(DROP_NODEPORTS, f"{proto} . {port.node_port}", comment=label))
    out += [Element(HAIRPIN, f"{ep.ip} . {ep.ip}") for ep in pol.selection.all_reachable]
    return out


def _affinity(port: ServicePortInfo, pol: Policy[EndpointInfo], cfg: NodeConfig, maps: list[Container],
              elements: list[Element]) -> Chain:
    """ClientIP affinity: the client-affinity map and members set (into maps), the addresses
    that lead to the remember- chain (into elements), and that chain."""
    ip = names.family_keyword(cfg.ip_family)
    proto = port.protocol.lower()
    base = names.port_base(port.name)
    aff_map, members, remember = names.CLIENT_AFFINITY + base, names.MEMBERS + base, names.REMEMBER + base
    maps += [affinity_map(ip, aff_map, port.session_affinity_timeout), members_set(ip, members, proto)]
    elements += [Element(members, f"{ep.ip} . {ep.port}") for ep in pol.selection.cluster]
    elements += [Element(AFFINITY_SERVICES, f"{a} . {proto} . {port.port}", f"goto {remember}")
                 for a in (port.cluster_ip, *_external_addresses(port))]
    if port.node_port:
        elements.append(Element(AFFINITY_NODEPORTS, f"{proto} . {port.node_port}", f"goto {remember}"))
    return Chain(remember, (f"{ip} daddr . {proto} dport @{members} update @{aff_map} {{ {ip} saddr : {ip} daddr }}",))


def _map_chain(port: ServicePortInfo, name: str, map_name: str, eps: tuple[EndpointInfo, ...], chains: PortChains,
               cfg: NodeConfig, own_maps: frozenset[str], dnat_port: int | None, maps: list[Container],
               elements: list[Element]) -> Chain:
    """service-* or local-*: DNAT through the port's slot of a shared endpoints map, or its own
    map when the slot collides (the map and its elements go into maps and elements)."""
    ip = names.family_keyword(cfg.ip_family)
    proto = port.protocol.lower()
    if map_name in own_maps:
        maps.append(endpoints_map(ip, map_name, proto))
        elements.extend(endpoint_elements(map_name, eps))
        choose = f"numgen random mod {RANGE} map @{map_name}"
    else:
        shared, offset = placement(map_name)
        maps.append(shared_map(ip, shared))
        tag = str(port.name) if name == chains.cluster else f"{port.name} local"
        elements.extend(endpoint_elements(shared, eps, SLOT, offset, tag))
        choose = f"numgen random mod {SLOT}{f' offset {offset}' if offset else ''} map @{shared}"
    rules = internal_masquerade(port, cfg) if name == chains.internal(port) else []
    if dnat_port is not None:  # a client seen before goes to the endpoint it went to
        aff_map = names.CLIENT_AFFINITY + names.port_base(port.name)
        rules.append(f"meta l4proto {proto} dnat {ip} to {ip} saddr map @{aff_map} : {dnat_port}")
    rules.append(f"meta l4proto {proto} dnat {ip} to {choose}")
    return Chain(name, tuple(rules))
