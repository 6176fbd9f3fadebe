"""What the BPF maps must hold for a desired state, and the writes that get them there.

Pure functions (no kernel): state -> per-service Entries -> a Writes plan between two of them.
The byte layouts mirror the structs in bpf/sock.c; keep the two in step.

One endpoint set is a Group: the ClusterIP's (internalTrafficPolicy) and, for a Service
reachable from outside, the one its NodePort, externalIPs and LB IPs use when the client is on
this node (kube-proxy sends such local traffic to the Cluster endpoints even with eTP=Local).
Service keys point at a group by id; a group's endpoints fill slots 0..n-1 of its id."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from ...config import NodeConfig
from ...state import ProxyState, ServicePortInfo, ServiceState

PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
SVC_F_REJECT = 1  # no usable endpoint anywhere: connect() fails with ECONNREFUSED
SVC_F_PASS = 2  # endpoints exist, none under this policy: nftables decides (it drops)

SVC_KEY_SIZE, SVC_VAL_SIZE = 20, 16
SLOT_KEY_SIZE, BACKEND_SIZE = 8, 20
EP_KEY_SIZE, COUNTER_SIZE = 24, 8

Endpoint = tuple[str, int]  # (ip, port)
GroupName = tuple[str, str]  # ("ns/name:port", "internal" | "external")


# --- byte layouts (bpf/sock.c) ----------------------------------------------------------------

@lru_cache(maxsize=1 << 18)
def addr16(ip: str) -> bytes:
    """An address as the maps hold it: 16 bytes, IPv4 in the first 4. (inet_pton and a cache:
    ipaddress took most of a cold 10,000-service sync.)"""
    if ":" in ip:
        return socket.inet_pton(socket.AF_INET6, ip)
    return socket.inet_pton(socket.AF_INET, ip) + bytes(12)


def addr_of(raw: bytes, family: int) -> str:
    return str(ipaddress.ip_address(raw[:4] if family == 4 else raw[:16]))


def svc_key(ip: str, port: int, protocol: str) -> bytes:
    return addr16(ip) + port.to_bytes(2, "big") + bytes((PROTOCOLS[protocol], 0))


def svc_val(gid: int, count: int, affinity_timeout: int, flags: int) -> bytes:
    return struct.pack("<IIII", gid, count, affinity_timeout, flags)


def slot_key(gid: int, slot: int) -> bytes:
    return struct.pack("<II", gid, slot)


@lru_cache(maxsize=1 << 18)
def backend(ep: Endpoint) -> bytes:
    return addr16(ep[0]) + ep[1].to_bytes(2, "big") + b"\0\0"


def ep_key(gid: int, ep: Endpoint) -> bytes:
    return struct.pack("<I", gid) + backend(ep)


def parse_svc_val(raw: bytes) -> tuple[int, int, int, int]:
    return struct.unpack("<IIII", raw)


def parse_backend(raw: bytes, family: int) -> Endpoint:
    return addr_of(raw[:16], family), int.from_bytes(raw[16:18], "big")


# --- what one Service needs ---------------------------------------------------------------------

@dataclass(frozen=True)
class Group:
    """One endpoint set with the behaviour of the keys that use it."""

    endpoints: tuple[Endpoint, ...]  # in slot order
    affinity_timeout: int = 0
    flags: int = 0


@dataclass
class Entries:
    """One Service's part of the maps: its service keys, and its groups."""

    keys: dict[bytes, GroupName] = field(default_factory=dict)
    groups: dict[GroupName, Group] = field(default_factory=dict)


def _group(endpoints: Iterable[Endpoint], has_any: bool, affinity: int) -> Group:
    eps = tuple(endpoints)
    if not has_any:
        return Group((), 0, SVC_F_REJECT)
    return Group(eps, affinity, 0 if eps else SVC_F_PASS)


def external_addresses(port: ServicePortInfo, cfg: NodeConfig) -> list[tuple[str, int]]:
    """(address, port) pairs a local client may use for the Service from outside's view:
    NodePort on the node's addresses (not loopback: nftables mode has no localhost NodePorts),
    externalIPs, LB IPs. LB IPs with source ranges are left to nftables' firewall."""
    out: list[tuple[str, int]] = []
    if port.node_port:
        ips = cfg.nodeport_ips if cfg.nodeport_ips is not None else cfg.local_ips
        out += [(ip, port.node_port) for ip in ips if not ipaddress.ip_address(ip).is_loopback]
    out += [(ip, port.port) for ip in port.external_ips]
    if not port.load_balancer_source_ranges:
        out += [(ip, port.port) for ip in port.load_balancer_ips]
    return out


def service_entries(svc: ServiceState, state: ProxyState, cfg: NodeConfig) -> Entries:
    """The map entries of one Service: kube-proxy's selection (model/selection.py), as the
    other modes render it, turned into groups."""
    out = Entries()
    for port in svc.ports:
        if port.protocol not in PROTOCOLS:
            continue
        pol = state.policy(port, cfg)
        sel, name = pol.selection, str(port.name)
        internal = sel.local if port.internal_policy_local else sel.cluster
        eps = lambda xs: ((e.ip, e.port) for e in xs)  # noqa: E731
        gi = _group(eps(internal), pol.has_endpoints, port.session_affinity_timeout)
        out.groups[(name, "internal")] = gi
        out.keys[svc_key(port.cluster_ip, port.port, port.protocol)] = (name, "internal")
        ext = external_addresses(port, cfg)
        if not ext:
            continue
        ge = _group(eps(sel.cluster), pol.has_endpoints, port.session_affinity_timeout)
        gname = (name, "internal") if ge == gi else (name, "external")
        out.groups[gname] = ge
        for ip, p in ext:
            out.keys.setdefault(svc_key(ip, p, port.protocol), gname)
    return out


def desired(state: ProxyState, cfg: NodeConfig, keys: Iterable[str] | None = None) -> dict[str, Entries]:
    """Entries per service key, for every service or for keys only."""
    wanted = state.services if keys is None else {k: state.services[k] for k in keys if k in state.services}
    return {k: service_entries(s, state, cfg) for k, s in wanted.items()}


# --- from old entries to new: the writes ---------------------------------------------------------

def assign_slots(old: tuple[Endpoint, ...], new: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """new's endpoints in slot order, keeping each surviving endpoint in its old slot, so a
    one-endpoint change rewrites one slot rather than all of them."""
    keep = set(new)
    slots: list[Endpoint | None] = [ep if ep in keep else None for ep in old][:len(new)]
    placed = {ep for ep in slots if ep is not None}
    # survivors beyond the new length move into holes; new endpoints fill what remains
    pending = [ep for ep in old[len(new):] if ep in keep] + [ep for ep in new if ep not in set(old)]
    pending = [ep for ep in pending if ep not in placed]
    for i, ep in enumerate(slots):
        if ep is None and pending:
            slots[i] = pending.pop(0)
    slots += pending
    return tuple(ep for ep in slots if ep is not None)


@dataclass
class Writes:
    """Map operations in the order that keeps every lookup valid while they run: endpoints
    (counters) before the slots that name them, slots before the service keys that count them,
    deletions last."""

    ep_add: list[tuple[bytes, bytes]] = field(default_factory=list)
    slot_set: list[tuple[bytes, bytes]] = field(default_factory=list)
    svc_set: list[tuple[bytes, bytes]] = field(default_factory=list)
    svc_del: list[bytes] = field(default_factory=list)
    slot_del: list[bytes] = field(default_factory=list)
    ep_del: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(x) for x in (self.ep_add, self.slot_set, self.svc_set, self.svc_del, self.slot_del, self.ep_del))


@dataclass
class Ids:
    """Group ids: stable for a group's life, reused after it is gone."""

    by_group: dict[GroupName, int] = field(default_factory=dict)
    taken: set[int] = field(default_factory=set)
    next_id: int = 1

    def get(self, name: GroupName, prefer: int | None = None) -> int:
        if name in self.by_group:
            return self.by_group[name]
        if prefer is not None and prefer not in self.taken:
            gid = prefer
        else:
            while self.next_id in self.taken:
                self.next_id += 1
            gid = self.next_id
        self.by_group[name] = gid
        self.taken.add(gid)
        return gid

    def release(self, name: GroupName) -> None:
        gid = self.by_group.pop(name, None)
        if gid is not None:
            self.taken.discard(gid)
            self.next_id = min(self.next_id, gid)


def plan(old: Mapping[str, Entries], new: Mapping[str, Entries | None], ids: Ids,
         writes: Writes | None = None) -> tuple[Writes, dict[str, Entries]]:
    """The writes from old to new for the services in new (None: the service is gone), and
    the new entries as placed in slots (the record of the maps after the writes)."""
    w = writes if writes is not None else Writes()
    placed: dict[str, Entries] = {}
    released: list[GroupName] = []
    for key, ent in new.items():
        before = old.get(key, Entries())
        after = Entries(keys=dict(ent.keys) if ent else {})
        for gname, g in (ent.groups.items() if ent else ()):
            prev = before.groups.get(gname)
            g = Group(assign_slots(prev.endpoints if prev else (), g.endpoints), g.affinity_timeout, g.flags)
            after.groups[gname] = g
            _group_writes(w, ids.get(gname), prev, g)
        for gname, prev in before.groups.items():
            if gname not in after.groups:
                _group_writes(w, ids.get(gname), prev, None)
        for k, gname in after.keys.items():
            g = after.groups[gname]
            was = before.keys.get(k)
            pg = before.groups.get(was) if was else None
            if was != gname or pg is None or (len(pg.endpoints), pg.affinity_timeout, pg.flags) != (
                    len(g.endpoints), g.affinity_timeout, g.flags):
                w.svc_set.append((k, svc_val(ids.get(gname), len(g.endpoints), g.affinity_timeout, g.flags)))
        w.svc_del += [k for k in before.keys if k not in after.keys]
        released += [g for g in before.groups if g not in after.groups]
        if ent is not None:
            placed[key] = after
    for gname in released:  # only now: an id reused within these writes could misroute
        ids.release(gname)
    return w, placed


def _group_writes(w: Writes, gid: int, prev: Group | None, new: Group | None) -> None:
    old_eps = prev.endpoints if prev else ()
    new_eps = new.endpoints if new else ()
    old_set, new_set = set(old_eps), set(new_eps)
    w.ep_add += [(ep_key(gid, ep), bytes(COUNTER_SIZE)) for ep in new_eps if ep not in old_set]
    w.slot_set += [(slot_key(gid, i), backend(ep)) for i, ep in enumerate(new_eps)
                   if i >= len(old_eps) or old_eps[i] != ep]
    w.slot_del += [slot_key(gid, i) for i in range(len(new_eps), len(old_eps))]
    w.ep_del += [ep_key(gid, ep) for ep in old_eps if ep not in new_set]
