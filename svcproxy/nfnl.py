"""Reading the answers to one nfnetlink request: the loop every netlink client here shares
(nf_tables dumps in dataplane/nftables/session.py, conntrack in runtime/ctnetlink.py)."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

NLMSG_ERROR, NLMSG_DONE = 2, 3
HEADER = 16  # struct nlmsghdr
NFGENMSG = 4  # struct nfgenmsg, in front of every nfnetlink body


def answers(sock: socket.socket, seq: int, error: type[OSError] = OSError) -> Iterator[tuple[int, bytes]]:
    """(message type, body after the nfgenmsg) of each answer to request seq, until the dump's
    NLMSG_DONE or the request's acknowledgement. An error answer raises error(errno, text);
    answers to other requests are skipped."""
    while True:
        buf = sock.recv(1 << 20)
        off = 0
        while off + HEADER <= len(buf):
            length, kind, _flags, msg_seq, _pid = struct.unpack_from("=IHHII", buf, off)
            if length < HEADER:
                raise error("malformed netlink answer")
            if msg_seq == seq:
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", buf, off + HEADER)
                    if code:
                        raise error(-code, os.strerror(-code))
                    return  # the acknowledgement
                yield kind, buf[off + HEADER + NFGENMSG:off + length]
            off += (length + 3) & ~3
