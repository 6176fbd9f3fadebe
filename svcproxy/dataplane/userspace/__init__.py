"""userspace mode: the node itself answers on every service address and relays each connection.

For hosts where netfilter cannot be programmed: no rule is written anywhere. Service IPs are
made local on the svcproxy0 interface (interface.py), one socket listens per frontend
(plan.py: ClusterIP, externalIP, LB IP and NodePort, TCP and UDP), and each new connection
or UDP session goes to an endpoint picked round-robin, with ClientIP affinity (balancer.py).

Threads: the sockets live on one asyncio event loop in a background thread (LoopThread).
sync() is called from the daemon's own thread; it computes the plan there (pure) and hands it
to the loop with run_coroutine_threadsafe, waiting for the result, so the proxier's state is
only ever touched by the loop's thread.

Changes: established TCP connections go on when their endpoint leaves the service (as
conntrack keeps them in the kernel modes); UDP sessions to a removed endpoint end, so the
client's next datagram goes to one that remains (kube-proxy clears those conntrack entries).

Differences from the kernel modes, by nature: endpoints see the node's address as the client
(every connection is proxied, like kube-proxy's old userspace mode); a refused external client
(loadBalancerSourceRanges, eTP=Local without local endpoint) is reset rather than dropped; a
NodePort on every address (0.0.0.0) also answers on 127.0.0.1 and on the service addresses,
whatever --iptables-localhost-nodeports says.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import threading
from collections.abc import Collection, Coroutine
from typing import Any

from ...config import NodeConfig, ip_family
from ...state import ProxyState
from ..protocol import ApplyError, SyncResult
from .interface import IFNAME, ServiceInterface
from .plan import PlanCache, plan
from .proxier import Proxier

log = logging.getLogger("svcproxy.dataplane.userspace")

UDP_IDLE_TIMEOUT = 30.0  # seconds; conntrack's default for UDP (nf_conntrack_udp_timeout)
HANDOVER_TIMEOUT = 30.0


class LoopThread:
    """One asyncio event loop running in a daemon thread; run() executes a coroutine on it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = HANDOVER_TIMEOUT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


def raise_fd_limit() -> None:
    """Every frontend is a socket and every relayed connection two: a soft limit of 1024 open
    files would cap a node at a few hundred services, so take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit from %d: %s", soft, e)


class UserspaceDataplane:
    mode = "userspace"

    def __init__(self, cfg: NodeConfig, ifname: str = IFNAME, udp_idle_timeout: float = UDP_IDLE_TIMEOUT) -> None:
        self.cfg = cfg
        self.interface = ServiceInterface(ifname)
        self.udp_idle_timeout = udp_idle_timeout
        self._lock = threading.Lock()  # one sync or cleanup at a time
        self._loop: LoopThread | None = None  # started by the first sync, not by construction
        self._proxier: Proxier | None = None
        self._reported: set[str] = set()  # unsupported service ports already named in the log
        self._failing: set[str] = set()  # frontends that could not listen, already named in the log
        self._plans: PlanCache = {}  # per service, reused while its ServiceState is unchanged
        self._addresses: set[str] | None = None  # on svcproxy0 after the last sync; None: read it
        self.removed_interface = False  # the last cleanup() deleted svcproxy0 (it existed)

    def sync(self, state: ProxyState, changed: Collection[str] | None = None) -> SyncResult:
        """Reconcile the listeners and svcproxy0 with the state; only differences touch the
        kernel (open listeners stay open). A full sync (changed None) also reads svcproxy0's
        addresses back, repairing anything changed by hand; a partial one trusts what the last
        sync left there."""
        with self._lock:
            wanted = plan(state, self.cfg, self._plans)
            for name, why in wanted.unsupported.items():
                if name not in self._reported:
                    log.warning("%s: %s", name, why)
            self._reported = set(wanted.unsupported)
            try:
                if changed is None or self._addresses is None:
                    self.interface.ensure()
                    # this family's only: a dual-stack daemon's other family owns the rest
                    self._addresses = {a for a in self.interface.addresses() if ip_family(a) == self.cfg.ip_family}
                self.interface.change(add=wanted.addresses - self._addresses, remove=())
                self._addresses |= wanted.addresses
            except ApplyError:
                self._addresses = None  # unknown now: read back at the next sync
                raise
            if self._loop is None:
                raise_fd_limit()
                self._loop = LoopThread("svcproxy-userspace")
                self._proxier = Proxier(self.cfg, self.udp_idle_timeout)
            assert self._proxier is not None
            try:
                errors = self._loop.run(self._proxier.apply(wanted))
            except TimeoutError:
                raise ApplyError("the userspace proxy's event loop did not answer within "
                                 f"{HANDOVER_TIMEOUT:.0f}s; listeners may be out of date") from None
            for err in set(errors) - self._failing:  # each failure once, not at every sync
                log.error("%s; retrying at every sync (is another process using the port?)", err)
            self._failing = set(errors)
            stale = self._addresses - wanted.addresses  # no listener uses them any more
            try:
                self.interface.change(add=(), remove=stale)
            except ApplyError:
                self._addresses = None
                raise
            self._addresses = set(wanted.addresses)
            return SyncResult(full=changed is None, rules={})

    @property
    def listening(self) -> set[tuple[str, str, int]]:
        """The frontends with an open socket (for tests and logs); read on the loop's thread."""
        if self._loop is None or self._proxier is None:
            return set()
        proxier = self._proxier

        async def read() -> set[tuple[str, str, int]]:
            return proxier.listening

        return self._loop.run(read())

    def cleanup(self) -> None:
        """Close every listener and relayed connection, then delete svcproxy0 (and with it the
        service addresses). Works in a fresh process too: then only the interface is left."""
        with self._lock:
            if self._loop is not None and self._proxier is not None:
                self._loop.run(self._proxier.close())
                self._loop.stop()
                self._loop, self._proxier = None, None
            # whether there was an interface to remove: `svcproxy cleanup` says so only then
            self.removed_interface = self.interface.delete()
            self._addresses = None
