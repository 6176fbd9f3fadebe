"""Reading ebpf mode's decisions back: from the pinned maps of a running node (any process may
read them), or from a state (manifests). For `svcproxy trace` (the socket-level step that comes
before routing) and the status page (connections per endpoint: with no DNAT there is no
conntrack entry to count)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ...config import NodeConfig, format_endpoint
from ...state import ProxyState
from . import bpfsys, loader, maps

PROTOCOL_NAMES = {v: k for k, v in maps.PROTOCOLS.items()}


@dataclass(frozen=True)
class SocketChoice:
    """What connect() to one Service address does in the cgroup's processes."""

    verdict: str  # "rewrite" | "reject" (ECONNREFUSED) | "pass" (left to nftables)
    endpoints: tuple[tuple[str, float], ...] = ()  # ("ip:port", probability), sorted
    affinity_timeout: int = 0

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "affinity_timeout": self.affinity_timeout,
                "endpoints": [{"endpoint": e, "probability": p} for e, p in self.endpoints]}


def _choice(flags: int, slots: list[tuple[str, int]], affinity: int) -> SocketChoice:
    if flags & maps.SVC_F_REJECT:
        return SocketChoice("reject")
    if flags & maps.SVC_F_PASS or not slots:
        return SocketChoice("pass")
    share: dict[str, int] = {}
    for ip, port in slots:
        key = format_endpoint(ip, port)
        share[key] = share.get(key, 0) + 1
    return SocketChoice("rewrite", tuple(sorted((e, n / len(slots)) for e, n in share.items())), affinity)


def choice_from_state(state: ProxyState, cfg: NodeConfig, ip: str, port: int, protocol: str) -> SocketChoice | None:
    """The hooks' choice for ip:port as the state would program it; None: not a Service
    address the hooks know (the packet goes on unchanged, to nftables)."""
    key = maps.svc_key(ip, port, protocol)
    for svc in state.services.values():
        ent = maps.service_entries(svc, state, cfg)
        if key in ent.keys:
            g = ent.groups[ent.keys[key]]
            return _choice(g.flags, list(g.endpoints), g.affinity_timeout)
    return None


@contextlib.contextmanager
def pinned_maps(pin_root: Path, family: int) -> Iterator[dict[str, int]]:
    """fds of one family's pinned maps (empty when ebpf mode is not running), closed after."""
    fds: dict[str, int] = {}
    try:
        for name in ("services", "slots", "endpoints"):
            pin = loader.family_dir(pin_root, family) / "maps" / name
            if pin.exists():
                fds[name] = bpfsys.obj_get(str(pin))
        yield fds if len(fds) == 3 else {}
    finally:
        for fd in fds.values():
            os.close(fd)


def choice_from_pins(ip: str, port: int, protocol: str, pin_root: Path = loader.DEFAULT_PIN_ROOT) -> SocketChoice | None:
    """The hooks' choice for ip:port from a running node's pinned maps; None when the address is
    not in them (or ebpf mode is not running here)."""
    family = 6 if ":" in ip else 4
    with pinned_maps(pin_root, family) as fds:
        if not fds:
            return None
        raw = bpfsys.lookup(fds["services"], maps.svc_key(ip, port, protocol), maps.SVC_VAL_SIZE)
        if raw is None:
            return None
        gid, count, affinity, flags = maps.parse_svc_val(raw)
        slots = []
        for i in range(count):
            be = bpfsys.lookup(fds["slots"], maps.slot_key(gid, i), maps.BACKEND_SIZE)
            if be is not None:
                slots.append(maps.parse_backend(be, family))
        return _choice(flags, slots, affinity)


def connections_from_pins(pin_root: Path = loader.DEFAULT_PIN_ROOT) -> dict[tuple[str, int, str], int]:
    """Connections the hooks sent to each endpoint, (ip, port, protocol) -> count, both families,
    summed over the Service addresses that lead there. Empty when ebpf mode is not running."""
    out: dict[tuple[str, int, str], int] = {}
    for family in (4, 6):
        with pinned_maps(pin_root, family) as fds:
            if not fds:
                continue
            proto_of = {}
            for k, v in bpfsys.items(fds["services"], maps.SVC_KEY_SIZE, maps.SVC_VAL_SIZE).items():
                proto_of[maps.parse_svc_val(v)[0]] = PROTOCOL_NAMES.get(k[18], "TCP")
            for k, v in bpfsys.items(fds["endpoints"], maps.EP_KEY_SIZE, maps.COUNTER_SIZE).items():
                gid = int.from_bytes(k[:4], "little")
                ip, port = maps.parse_backend(k[4:], family)
                key = (ip, port, proto_of.get(gid, "TCP"))
                out[key] = out.get(key, 0) + int.from_bytes(v, "little")
    return out
