"""The listeners and their endpoint choice; runs on the userspace dataplane's event loop only.

apply(plan) brings the listeners in step with a Plan: new frontends start listening, gone ones
stop, kept ones switch to their new endpoints in place (a listening socket is never re-opened,
so established connections and the accept queue are untouched).
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time
from functools import lru_cache

from ...config import NodeConfig
from .balancer import Balancer
from .plan import Endpoint, Frontend, Key, Plan, in_ranges, is_cluster_client
from .tcp import ClientSide, abort, serve
from .udp import UdpFrontend

log = logging.getLogger("svcproxy.dataplane.userspace")

HOUSEKEEPING_PERIOD = 1.0


@lru_cache(maxsize=4096)
def route_interface(ip: str) -> str | None:
    """The interface this node reaches a client by, which (routing being symmetric for pods) is
    the one its packets arrive on: the interface detect-local modes' input in userspace mode,
    where an accepted socket does not tell it. Looked up once per client address."""
    try:
        out = subprocess.run(["ip", "-j", "route", "get", ip], capture_output=True, text=True, timeout=2).stdout
        return json.loads(out or "[{}]")[0].get("dev")
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


class Proxier:
    def __init__(self, cfg: NodeConfig, udp_idle_timeout: float) -> None:
        self.cfg = cfg
        self.udp_idle_timeout = udp_idle_timeout
        self.specs: dict[Key, Frontend] = {}
        self.tcp: dict[Key, asyncio.AbstractServer] = {}
        self.udp: dict[Key, UdpFrontend] = {}
        self.connections: set[ClientSide] = set()
        self.balancers: dict[str, Balancer] = {}
        self._housekeeping: asyncio.Task | None = None

    @property
    def listening(self) -> set[Key]:
        return set(self.tcp) | set(self.udp)

    async def apply(self, plan: Plan) -> list[str]:
        """Listen on exactly the plan's frontends; returns the frontends that could not listen
        (they are retried on the next sync)."""
        if self._housekeeping is None:
            self._housekeeping = asyncio.get_running_loop().create_task(self._housekeep())
        for key in self.listening - set(plan.frontends):
            self._close(key)
        errors = []
        for key, fe in plan.frontends.items():
            self.specs[key] = fe
            if key in self.udp:
                self.udp[key].drop_endpoints_except(fe.endpoints)
            if key in self.tcp or key in self.udp:
                continue
            try:
                await self._open(key)
            except OSError as e:
                del self.specs[key]
                proto, ip, port = key
                errors.append(f"{fe.service}: cannot listen on {proto} {ip}:{port} ({fe.kind}): {e.strerror or e}")
        services = {fe.service for fe in self.specs.values()}
        for name in set(self.balancers) - services:
            del self.balancers[name]
        return errors

    async def _open(self, key: Key) -> None:
        proto, ip, port = key
        family = self.cfg.ip_family
        if proto == "TCP":
            self.tcp[key] = await serve(family, ip, port, self._chooser(key), self.connections)
        else:
            self.udp[key] = UdpFrontend(family, ip, port, self._chooser(key))

    def _close(self, key: Key) -> None:
        self.specs.pop(key, None)
        if key in self.tcp:
            self.tcp.pop(key).close()  # stops accepting; established connections go on
        if key in self.udp:
            self.udp.pop(key).close()

    def _chooser(self, key: Key):  # noqa: ANN202
        """The endpoint choice of one frontend; it reads the frontend's current spec on every
        connection, so a sync changes where new connections go without touching the socket."""

        def choose(client_ip: str, local_ip: str, failed: set[Endpoint]) -> Endpoint | None:
            fe = self.specs.get(key)
            if fe is None:
                return None
            if fe.source_ranges and not in_ranges(client_ip, fe.source_ranges):
                log.debug("%s: client %s is outside loadBalancerSourceRanges", fe.service, client_ip)
                return None
            outside = fe.is_external and not is_cluster_client(client_ip, self.cfg, route_interface)
            candidates = [ep for ep in (fe.external if outside else fe.internal) if ep not in failed]
            balancer = self.balancers.setdefault(fe.service, Balancer())
            if failed:
                balancer.forget(client_ip)
            return balancer.choose(client_ip, candidates, fe.affinity_timeout, time.monotonic())

        return choose

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_PERIOD)
            now = time.monotonic()
            for udp in self.udp.values():
                udp.expire(now, self.udp_idle_timeout)
            timeouts: dict[str, int] = {}
            for fe in self.specs.values():
                timeouts[fe.service] = max(timeouts.get(fe.service, 0), fe.affinity_timeout)
            for name, balancer in self.balancers.items():
                balancer.expire(now, timeouts.get(name, 0))

    async def close(self) -> None:
        """Stop listening and end every relayed connection and session."""
        for key in list(self.listening):
            self._close(key)
        for conn in list(self.connections):
            if conn.transport is not None:
                abort(conn.transport)
            if conn.peer is not None and conn.peer.transport is not None:
                abort(conn.peer.transport)
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            self._housekeeping = None
