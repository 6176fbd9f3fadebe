"""TCP: accept on a service address, connect to an endpoint, copy bytes both ways.

Two asyncio protocols per connection, one per side, each writing into the other's transport.
Flow control: when one side's send buffer fills, the other side stops reading until it drains.
Half-close is passed on (EOF from the client becomes a FIN to the endpoint, and back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

from .plan import Endpoint

log = logging.getLogger("svcproxy.dataplane.userspace")

CONNECT_TIMEOUT = 2.0  # per endpoint attempt; then the next endpoint is tried
# chooser(client_ip, local_ip, failed) -> endpoint or None (refuse)
Chooser = Callable[[str, str, set[Endpoint]], Endpoint | None]


class _Side(asyncio.Protocol):
    """One end of a relayed connection; `peer` is the other end."""

    def __init__(self, peer: _Side | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer = peer
        self.closed = False
        self.eof = False  # this side's remote end has finished sending (its FIN arrived)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.peer and self.peer.transport and not self.peer.closed:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None or peer.transport is None or peer.closed:
            return False
        if peer.eof:  # both directions are finished: close both sockets
            peer.transport.close()
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
            return True  # keep the other direction open (half-close)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer and self.peer.transport and not self.peer.closed:
            if exc is not None:
                abort(self.peer.transport)  # a reset on one side resets the other
            else:
                self.peer.transport.close()  # flushes what is still buffered
        self.peer = None  # no peer <-> peer cycle: reference counting frees both sides at once

    # our send buffer is full: stop reading from the other side until it drains
    def pause_writing(self) -> None:
        if self.peer and self.peer.transport and not self.peer.closed:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer and self.peer.transport and not self.peer.closed:
            self.peer.transport.resume_reading()


class ClientSide(_Side):
    """An accepted connection: holds reading until its endpoint connection is up."""

    def __init__(self, choose: Chooser, connections: set[ClientSide]) -> None:
        super().__init__()
        self.choose = choose
        self.connections = connections
        self.endpoint: Endpoint | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.pause_reading()  # type: ignore[attr-defined]
        self.connections.add(self)
        asyncio.get_running_loop().create_task(self._connect())

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.connections.discard(self)

    async def _connect(self) -> None:
        assert self.transport is not None
        client = self.transport.get_extra_info("peername")[0]
        local = self.transport.get_extra_info("sockname")[0]
        failed: set[Endpoint] = set()
        loop = asyncio.get_running_loop()
        while not self.closed:
            ep = self.choose(client, local, failed)
            if ep is None:
                break
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    # the endpoint side knows its peer from the start: a server that speaks
                    # first is relayed even before this coroutine resumes
                    _, upstream = await loop.create_connection(lambda: _Side(self), ep[0], ep[1])
            except (OSError, TimeoutError) as e:
                log.debug("endpoint %s:%s failed (%s); trying another", ep[0], ep[1], e)
                failed.add(ep)
                continue
            if self.closed:
                upstream.transport.close()  # type: ignore[union-attr]
                return
            self.endpoint, self.peer = ep, upstream  # type: ignore[assignment]
            self.transport.resume_reading()
            return
        abort(self.transport)  # no endpoint answered: reset, as a REJECT would


def abort(transport: Any) -> None:
    """Close with a TCP reset rather than a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def listen_socket(family: int, address: str, port: int, kind: int) -> socket.socket:
    """A bound socket that may share its port with a wildcard one (SO_REUSEPORT: the kernel
    prefers the exact address) and binds before its address is up (IP_FREEBIND)."""
    sock = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND (also covers IPv6 sockets)
        if family == 6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve(family: int, address: str, port: int, choose: Chooser,
                connections: set[ClientSide]) -> asyncio.AbstractServer:
    sock = listen_socket(family, address, port, socket.SOCK_STREAM)
    sock.listen(1024)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: ClientSide(choose, connections), sock=sock)
