"""The kept-open netfilter netlink socket that sends netlink.py's messages as one batch."""

from __future__ import annotations

import os
import socket
import struct

from .netlink import FAMILIES, NFNL_SUBSYS_NFTABLES

NETLINK_NETFILTER = 12
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2


class NetlinkError(OSError):
    pass


class Session:
    """One netfilter netlink socket, kept open: each send() is one atomic nf_tables batch."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        for force, plain in ((32, socket.SO_SNDBUF), (33, socket.SO_RCVBUF)):  # SO_*BUFFORCE need root
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, force, 1 << 26)
            except PermissionError:
                self.sock.setsockopt(socket.SOL_SOCKET, plain, 1 << 26)
        self.sock.bind((0, 0))
        self.seq = int.from_bytes(os.urandom(2), "big") << 8

    def close(self) -> None:
        self.sock.close()

    def _header(self, msg_type: int, flags: int, family: int, res_id: int, length: int) -> bytes:
        self.seq += 1
        return struct.pack("=IHHII", 16 + 4 + length, msg_type, flags, self.seq, 0) + struct.pack(
            "=BBH", family, 0, socket.htons(res_id))

    def send(self, family: str, messages: list[tuple[int, int, bytes]]) -> None:
        """Send messages as one batch; raise NetlinkError (nothing applied) if the kernel refuses."""
        fam = FAMILIES[family]
        parts = [self._header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES, 0)]
        first = self.seq + 1
        for msg_type, flags, attrs in messages:
            parts.append(self._header((NFNL_SUBSYS_NFTABLES << 8) | msg_type, NLM_F_REQUEST | NLM_F_ACK | flags,
                                      fam, 0, len(attrs)) + attrs)
        last = self.seq
        parts.append(self._header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES, 0))
        data = b"".join(parts)
        if self.sock.send(data) != len(data):
            raise NetlinkError("short send of a netlink batch")
        self._wait_acks(first, last)

    def _wait_acks(self, first: int, last: int) -> None:
        pending = last - first + 1
        errors: list[str] = []
        while pending > 0:
            buf = self.sock.recv(1 << 20)
            off = 0
            while off + 16 <= len(buf):
                length, msg_type, _flags, seq, _pid = struct.unpack_from("=IHHII", buf, off)
                if msg_type == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", buf, off + 16)
                    if first <= seq <= last:
                        pending -= 1
                        if code:
                            errors.append(f"message {seq - first + 1}: {os.strerror(-code)}")
                off += (length + 3) & ~3
                if length == 0:
                    break
            if errors and pending > 0:
                # the kernel aborted the batch; it acks only what it processed
                self.sock.setblocking(False)
                try:
                    while self.sock.recv(1 << 20):
                        pass
                except BlockingIOError:
                    pass
                finally:
                    self.sock.setblocking(True)
                break
        if errors:
            raise NetlinkError(f"the kernel refused the batch ({len(errors)} error(s): {'; '.join(errors[:3])})")
