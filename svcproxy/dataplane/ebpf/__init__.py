"""ebpf mode: Services resolved when a local socket connects, nftables for everything else.

Two parts, synced together:
- BPF programs on a cgroup's socket hooks (bpf/sock.c) pick the endpoint at connect() and
  sendmsg() for processes in that cgroup (default: the whole cgroup v2 hierarchy), so their
  packets need no NAT. This module keeps the programs' maps in step with the state
  (maps.py plans the writes, bpfsys.py makes them, loader.py loads and pins).
- The nftables `maps` layout (given as `outside`, built by dataplane/__init__.py) for traffic
  from outside the node and for anything the hooks did not rewrite (a process outside the
  cgroup, raw sockets, source ranges, a drop): the BPF part only ever accelerates.

The programs and maps are pinned: the daemon can stop and start without a moment in which
local connections are not balanced, and a restarted one adopts what it finds."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection
from pathlib import Path

from ...config import NodeConfig
from ...gcpause import gc_paused
from ...state import ProxyState
from ..protocol import ApplyError, Dataplane, SyncResult
from . import bpfsys, build, loader, maps
from .maps import Entries, Ids, Writes

log = logging.getLogger(__name__)

CGROUP_ENV = "SVCPROXY_BPF_CGROUP"  # the cgroup to attach to when --bpf-cgroup is not given
PIN_ROOT_ENV = "SVCPROXY_BPF_PIN_ROOT"  # where the pins go (tests, a second instance)


def default_pin_root() -> Path:
    """SVCPROXY_BPF_PIN_ROOT, else /sys/fs/bpf/svcproxy."""
    return Path(os.environ.get(PIN_ROOT_ENV) or loader.DEFAULT_PIN_ROOT)


class EbpfUnavailable(RuntimeError):
    """This host cannot run ebpf mode; the message says what is missing and what to use."""


def default_cgroup() -> Path:
    """SVCPROXY_BPF_CGROUP, else the root of the cgroup v2 hierarchy (every process)."""
    env = os.environ.get(CGROUP_ENV)
    if env:
        return Path(env)
    return loader.cgroup2_root() or Path("/sys/fs/cgroup")


def check_host(cgroup: Path) -> None:
    """EbpfUnavailable naming everything missing, or nothing."""
    missing = loader.missing_requirements(cgroup)
    if missing:
        raise EbpfUnavailable("ebpf mode cannot run on this host: missing " + "; ".join(missing)
                              + ". Use --proxy-mode nftables (with --nftables-layout maps) instead.")


class EbpfDataplane:
    """The ebpf Dataplane of one IP family: its BPF maps, and the nftables dataplane beside."""

    mode = "ebpf"

    def __init__(self, cfg: NodeConfig, outside: Dataplane | None = None, cgroup: str | Path | None = None,
                 pin_root: str | Path | None = None, object_path: Path | None = None) -> None:
        self.cfg = cfg
        self.outside = outside
        cgroup = cgroup or cfg.bpf_cgroup  # --bpf-cgroup
        self.cgroup = Path(cgroup) if cgroup else None  # resolved at the first sync
        self.pin_root = Path(pin_root) if pin_root else default_pin_root()
        self.object_path = object_path
        self.loaded: loader.Loaded | None = None
        self.applied: dict[str, Entries] = {}  # service key -> what the maps hold for it
        self.ids = Ids()
        self.need_full = True
        self.last_writes = 0  # map elements written or deleted by the last sync
        self.last_map_seconds = 0.0  # time spent in bpf() by the last sync
        self.last_bpf_seconds = 0.0  # the BPF part of the last sync: plan and writes

    # --- the Dataplane protocol -------------------------------------------------------------

    def sync(self, state: ProxyState, changed: Collection[str] | None = None) -> SyncResult:
        """The BPF maps first (local clients see the change within a fraction of a millisecond),
        then nftables. When the BPF part fails, nftables is still synced before the error is
        raised: traffic keeps its nftables path."""
        t0 = time.perf_counter()
        try:
            if self.loaded is None:
                self.start()
            if changed is None or self.need_full:
                with gc_paused():  # 100k+ small objects that live on: see gcpause.py
                    n = self._full(state)
            else:
                n = self._partial(state, changed)
        except (EbpfUnavailable, bpfsys.BpfError) as e:
            if isinstance(e, bpfsys.BpfError):
                self.need_full, self.applied = True, {}  # the next sync reads the maps again
            if self.outside is not None:
                self.outside.sync(state, changed)
            if isinstance(e, bpfsys.BpfError):
                raise ApplyError(f"writing the BPF maps: {e}") from e
            raise
        self.last_bpf_seconds = time.perf_counter() - t0
        result = self.outside.sync(state, changed) if self.outside is not None else SyncResult(full=changed is None)
        result.rules["bpf"] = n
        return result

    def cleanup(self) -> None:
        """nftables' tables, then the BPF links (detached), maps and pins; nothing else."""
        if self.outside is not None:
            self.outside.cleanup()
        self.close()
        loader.remove(self.pin_root)
        self.applied, self.ids, self.need_full = {}, Ids(), True

    # --- start, stop ------------------------------------------------------------------------

    def start(self) -> None:
        """Check the host, build (if setup did not), load, attach or adopt."""
        cgroup = self.cgroup or default_cgroup()
        check_host(cgroup)
        try:
            obj = self.object_path or build.build()
        except build.BuildError as e:
            raise EbpfUnavailable(str(e)) from e
        try:
            self.loaded = loader.load(obj, cgroup, self.cfg.ip_family, self.pin_root)
        except loader.LoadError as e:
            raise EbpfUnavailable(f"{e}. Use --proxy-mode nftables (with --nftables-layout maps) instead.") from e
        self.cgroup = cgroup
        self.need_full = True
        log.info("ebpf: IPv%d programs %s on %s (pins in %s)", self.cfg.ip_family,
                 "adopted" if self.loaded.adopted else "attached", cgroup, self.loaded.pin_dir)

    def close(self) -> None:
        """Drop this process's handles; the pinned programs stay attached and keep working."""
        if self.loaded is not None:
            self.loaded.close()
            self.loaded = None

    # --- syncs ------------------------------------------------------------------------------

    def _full(self, state: ProxyState) -> int:
        """Every service. The first one of a process also removes whatever the pinned maps
        hold that the state does not (a previous run's leftovers), after writing the state,
        reusing the previous run's group ids so that no key ever points at a foreign slot."""
        want = maps.desired(state, self.cfg)
        if self.need_full and not self.applied:
            return self._write_fresh(want)
        new: dict[str, Entries | None] = {**dict.fromkeys(self.applied), **want}
        n = self._apply(new)
        self.need_full = False
        return n

    def _partial(self, state: ProxyState, changed: Collection[str]) -> int:
        want = maps.desired(state, self.cfg, changed)
        return self._apply({k: want.get(k) for k in changed})

    def _apply(self, new: dict[str, Entries | None]) -> int:
        writes, placed = maps.plan(self.applied, new, self.ids)
        self._execute(writes)
        for k in new:
            if k in placed:
                self.applied[k] = placed[k]
            else:
                self.applied.pop(k, None)
        return len(writes)

    def _write_fresh(self, want: dict[str, Entries]) -> int:
        fds = self._fds()
        present = bpfsys.items(fds["services"], maps.SVC_KEY_SIZE, maps.SVC_VAL_SIZE)
        old_ids = {k: maps.parse_svc_val(v)[0] for k, v in present.items()}
        # new groups get ids no present key uses; a group keeps the id its keys had
        self.ids = Ids(taken=set(old_ids.values()))
        claimed: set[int] = set()
        for ent in want.values():
            for k, gname in ent.keys.items():
                gid = old_ids.get(k)
                if gid is not None and gid not in claimed and gname not in self.ids.by_group:
                    claimed.add(gid)
                    self.ids.by_group[gname] = gid
        writes, placed = maps.plan({}, want, self.ids)
        written_slots = {k for k, _ in writes.slot_set}
        written_eps = {k for k, _ in writes.ep_add}
        had_eps = set(bpfsys.keys(fds["endpoints"], maps.EP_KEY_SIZE))
        wanted_keys = {k for e in want.values() for k in e.keys}
        writes.ep_add = [(k, v) for k, v in writes.ep_add if k not in had_eps]  # counters go on
        writes.svc_del = [k for k in present if k not in wanted_keys]
        writes.slot_del = [k for k in bpfsys.keys(fds["slots"], maps.SLOT_KEY_SIZE) if k not in written_slots]
        writes.ep_del = [k for k in had_eps if k not in written_eps]
        self._execute(writes)
        self.applied = placed
        self.ids.taken = set(self.ids.by_group.values())
        self.need_full = False
        return len(writes)

    def _fds(self) -> dict[str, int]:
        if self.loaded is None:
            raise ApplyError("ebpf: the BPF programs are not loaded")
        return self.loaded.maps

    def _execute(self, w: Writes) -> None:
        """The writes, map by map in their safe order, in batches."""
        fds = self._fds()
        t0 = time.perf_counter()
        for pairs, fd in ((w.ep_add, fds["endpoints"]), (w.slot_set, fds["slots"]), (w.svc_set, fds["services"])):
            if pairs:
                bpfsys.update_batch(fd, pairs)
        for keys, fd in ((w.svc_del, fds["services"]), (w.slot_del, fds["slots"]), (w.ep_del, fds["endpoints"])):
            if keys:
                bpfsys.delete_batch(fd, keys)
        self.last_map_seconds = time.perf_counter() - t0
        self.last_writes = len(w)

    # --- reading the maps back (tests, trace, status page) -----------------------------------

    def endpoint_counts(self) -> dict[tuple[str, str, int], int]:
        """Connections sent to each endpoint: (service port, ip, port) -> count."""
        fds = self._fds()
        names = {gid: gname for gname, gid in self.ids.by_group.items()}
        out: dict[tuple[str, str, int], int] = {}
        for k, v in bpfsys.items(fds["endpoints"], maps.EP_KEY_SIZE, maps.COUNTER_SIZE).items():
            gid = int.from_bytes(k[:4], "little")
            ip, port = maps.parse_backend(k[4:], self.cfg.ip_family)
            name = names.get(gid, (f"#{gid}", ""))[0]
            out[(name, ip, port)] = out.get((name, ip, port), 0) + int.from_bytes(v, "little")
        return out


__all__ = ["EbpfDataplane", "EbpfUnavailable", "check_host", "default_cgroup", "default_pin_root"]
