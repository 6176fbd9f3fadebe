"""UDP: per-client sessions between a service address and an endpoint.

A datagram from a new (client address, service address) pair opens a session: a connected
socket to the chosen endpoint whose replies go back to the client from the address it wrote
to. Sessions end after an idle timeout (conntrack's UDP timeout is the model), when their
endpoint leaves the service, or when the frontend closes.

A NodePort listening on every local address (0.0.0.0) learns each datagram's destination
from IP_PKTINFO and answers from it, so the client sees the reply come from where it sent.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from .plan import Endpoint, wildcard
from .tcp import listen_socket

log = logging.getLogger("svcproxy.dataplane.userspace")

IP_PKTINFO = 8
MAX_DATAGRAM = 65535
BATCH = 64  # datagrams read per wake-up, so one busy client cannot starve the loop
Chooser = Callable[[str, str, set[Endpoint]], Endpoint | None]


@dataclass
class Session:
    client: tuple  # the client's socket address
    local: str  # the service address the client wrote to
    endpoint: Endpoint
    sock: socket.socket
    last: float


class UdpFrontend:
    def __init__(self, family: int, address: str, port: int, choose: Chooser) -> None:
        self.family, self.address, self.port, self.choose = family, address, port, choose
        self.any = address == wildcard(family)
        self.loop = asyncio.get_running_loop()
        self.sock = listen_socket(family, address, port, socket.SOCK_DGRAM)
        if self.any:
            if family == 4:
                self.sock.setsockopt(socket.SOL_IP, IP_PKTINFO, 1)
            else:
                self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        self.sessions: dict[tuple, Session] = {}
        self.loop.add_reader(self.sock.fileno(), self._from_clients)

    # -- client -> endpoint --------------------------------------------------------------------
    def _from_clients(self) -> None:
        for _ in range(BATCH):
            try:
                data, ancdata, _, client = self.sock.recvmsg(MAX_DATAGRAM, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. an ICMP error queued on the socket
                log.debug("udp %s:%d: %s", self.address, self.port, e)
                continue
            local = self._destination(ancdata) if self.any else self.address
            key = (client[:2], local)
            sess = self.sessions.get(key)
            if sess is None:
                sess = self._open(client, local)
                if sess is None:
                    continue
            sess.last = time.monotonic()
            try:
                sess.sock.send(data)
            except (BlockingIOError, InterruptedError):
                pass  # the endpoint's queue is full: drop, as a busy network would
            except OSError:
                self.close_session(key)

    def _destination(self, ancdata: list) -> str:
        for level, kind, data in ancdata:
            if self.family == 4 and level == socket.SOL_IP and kind == IP_PKTINFO:
                return socket.inet_ntop(socket.AF_INET, data[8:12])
            if self.family == 6 and level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                return socket.inet_ntop(socket.AF_INET6, data[:16])
        return self.address

    def _open(self, client: tuple, local: str) -> Session | None:
        failed: set[Endpoint] = set()
        while True:
            ep = self.choose(client[0], local, failed)
            if ep is None:
                return None  # nobody to send to: drop (the client times out or retries)
            up = socket.socket(self.sock.family, socket.SOCK_DGRAM)
            up.setblocking(False)
            try:
                up.connect(ep)
            except OSError as e:
                up.close()
                log.debug("udp endpoint %s:%d: %s", ep[0], ep[1], e)
                failed.add(ep)
                continue
            key = (client[:2], local)
            sess = Session(client, local, ep, up, time.monotonic())
            self.sessions[key] = sess
            self.loop.add_reader(up.fileno(), self._from_endpoint, key)
            return sess

    # -- endpoint -> client --------------------------------------------------------------------
    def _from_endpoint(self, key: tuple) -> None:
        sess = self.sessions.get(key)
        if sess is None:
            return
        for _ in range(BATCH):
            try:
                data = sess.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP port unreachable from the endpoint: end the session
                self.close_session(key)
                return
            sess.last = time.monotonic()
            self._reply(sess, data)

    def _reply(self, sess: Session, data: bytes) -> None:
        try:
            if not self.any:
                self.sock.sendto(data, sess.client)
            elif self.family == 4:
                info = struct.pack("=i4s4s", 0, socket.inet_pton(socket.AF_INET, sess.local), b"\0" * 4)
                self.sock.sendmsg([data], [(socket.SOL_IP, IP_PKTINFO, info)], 0, sess.client)
            else:
                info = struct.pack("=16si", socket.inet_pton(socket.AF_INET6, sess.local), 0)
                self.sock.sendmsg([data], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info)], 0, sess.client)
        except OSError as e:
            log.debug("udp reply to %s: %s", sess.client, e)

    # -- housekeeping --------------------------------------------------------------------------
    def close_session(self, key: tuple) -> None:
        sess = self.sessions.pop(key, None)
        if sess is not None:
            self.loop.remove_reader(sess.sock.fileno())
            sess.sock.close()

    def expire(self, now: float, idle_timeout: float) -> None:
        for key in [k for k, s in self.sessions.items() if now - s.last >= idle_timeout]:
            self.close_session(key)

    def drop_endpoints_except(self, keep: frozenset[Endpoint]) -> None:
        """Sessions to endpoints the service no longer has end (kube-proxy clears their
        conntrack entries for the same reason): the client's next datagram picks a live one."""
        for key in [k for k, s in self.sessions.items() if s.endpoint not in keep]:
            self.close_session(key)

    def close(self) -> None:
        for key in list(self.sessions):
            self.close_session(key)
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
