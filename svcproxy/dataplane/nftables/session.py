"""The kept-open netfilter netlink socket that sends netlink.py's messages as one batch."""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
import threading
from dataclasses import dataclass

from ...nfnl import answers
from .netlink import FAMILIES, NFNL_SUBSYS_NFTABLES, attr

NETLINK_NETFILTER = 12
GETCHAIN, GETRULE, GETSET, GETSETELEM = 4, 7, 10, 13  # NFT_MSG_GET*
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3


class NetlinkError(OSError):
    pass


class Refused(NetlinkError):
    """The kernel answered the batch with errors and aborted it: nothing was applied."""


def parse_list(data: bytes) -> list[bytes]:
    """The payloads of a nested attribute list (every item, in order)."""
    out: list[bytes] = []
    off = 0
    while off + 4 <= len(data):
        length, _kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out.append(data[off + 4:off + length])
        off += (length + 3) & ~3
    return out


def parse_attrs(data: bytes, wanted: frozenset[int]) -> dict[int, bytes]:
    """The wanted top-level netlink attributes: type (without flag bits) -> payload."""
    out: dict[int, bytes] = {}
    off = 0
    end = len(data)
    while off + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        kind &= 0x3FFF
        if kind in wanted:
            out[kind] = data[off + 4:off + length]
            if len(out) == len(wanted):
                break
        off += (length + 3) & ~3
    return out


@dataclass(frozen=True)
class Batch:
    """A framed batch: its bytes and the sequence numbers of its begin and last message."""

    data: bytes
    begin: int
    last: int
    count: int  # messages between begin and end


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
        self._seq = itertools.count(int.from_bytes(os.urandom(2), "big") << 8)
        self._framing = threading.Lock()

    def close(self) -> None:
        self.sock.close()

    def _header(self, msg_type: int, flags: int, family: int, res_id: int, length: int) -> bytes:
        seq = next(self._seq)
        return struct.pack("=IHHII", 16 + 4 + length, msg_type, flags, seq, 0) + struct.pack(
            "=BBH", family, 0, socket.htons(res_id))

    def frame(self, family: str, messages: list[tuple[int, int, bytes]]) -> Batch:
        """The messages as one nf_tables batch, ready to send (done in the encoding thread).

        Only the last message asks for an acknowledgement: the kernel reports every failing
        message anyway, and acknowledging each of a cold sync's ~220,000 messages cost an
        allocation in the kernel and a recv() here per message."""
        with self._framing:  # consecutive sequence numbers, even if two threads frame
            return self._frame(FAMILIES[family], messages)

    def _frame(self, fam: int, messages: list[tuple[int, int, bytes]]) -> Batch:
        begin = self._header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES, 0)
        parts = [begin]
        last_index = len(messages) - 1
        for i, (msg_type, flags, attrs) in enumerate(messages):
            ack = NLM_F_ACK if i == last_index else 0
            parts.append(self._header((NFNL_SUBSYS_NFTABLES << 8) | msg_type, NLM_F_REQUEST | ack | flags,
                                      fam, 0, len(attrs)) + attrs)
        parts.append(self._header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES, 0))
        first_seq = struct.unpack_from("=I", begin, 8)[0]
        return Batch(b"".join(parts), first_seq, first_seq + len(messages), len(messages))

    def send(self, family: str, messages: list[tuple[int, int, bytes]]) -> None:
        """Send messages as one batch; raise NetlinkError (nothing applied) if the kernel refuses."""
        self.send_batch(self.frame(family, messages))

    def send_batch(self, batch: Batch) -> None:
        """The kernel handles the batch inside our send() call, so its answers are all queued
        when send() returns."""
        if not batch.count:
            return
        if self.sock.send(batch.data) != len(batch.data):
            raise NetlinkError("short send of a netlink batch")
        self._wait_acks(batch.begin, batch.last)

    def dump(self, family: str, msg_type: int, table: str, wanted: frozenset[int],
             chain: str = "") -> list[dict[int, bytes]]:
        """The table's chains (NFT_MSG_GETCHAIN) or sets (NFT_MSG_GETSET), or one chain's rules
        (NFT_MSG_GETRULE with chain), each as a dict of its wanted top-level attributes (none
        when the table or chain does not exist). Much cheaper than `nft -j list chains` (2-3 s
        at 10,000 services) or `list sets` (5 s: it also reads every anonymous set). A dump of
        every rule is not: the kernel restarts its walk for each 32 KB answer (~20 s at 10k)."""
        attrs = attr(1, table.encode() + b"\0")  # NFTA_CHAIN_TABLE / NFTA_SET_TABLE / NFTA_RULE_TABLE
        if chain:
            attrs += attr(2, chain.encode() + b"\0")  # NFTA_RULE_CHAIN: the kernel looks it up by name
        with self._framing:
            header = self._header((NFNL_SUBSYS_NFTABLES << 8) | msg_type, NLM_F_REQUEST | NLM_F_DUMP,
                                  FAMILIES[family], 0, len(attrs))
        seq = struct.unpack_from("=I", header, 8)[0]
        self.sock.send(header + attrs)
        try:
            return [parse_attrs(body, wanted) for _, body in answers(self.sock, seq)]
        except OSError as e:
            if e.errno == errno.ENOENT:
                return []
            raise NetlinkError(f"reading the table failed: {e.strerror or e}") from None

    def set_elements(self, family: str, table: str, name: str) -> list[tuple[bytes, bytes]]:
        """(key, data) of every element of a set or map (NFT_MSG_GETSETELEM), e.g. the entries
        the packet path wrote into a ClientIP affinity map."""
        out: list[tuple[bytes, bytes]] = []
        one = frozenset({1})
        for msg in self.dump(family, GETSETELEM, table, frozenset({3}), name):
            for elem in parse_list(msg.get(3, b"")):
                a = parse_attrs(elem, frozenset({1, 2}))  # NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA
                out.append((parse_attrs(a.get(1, b""), one).get(1, b""), parse_attrs(a.get(2, b""), one).get(1, b"")))
        return out

    def _wait_acks(self, begin: int, last: int) -> None:
        """Read answers until the last message's acknowledgement. An error names the failing
        message; one on the batch's begin seq (the commit failed, or the kernel ran out of
        memory) may come without the last acknowledgement, so errors end the wait."""
        errors: list[str] = []
        done = False
        while not done and not errors:
            buf = self.sock.recv(1 << 20)
            off = 0
            while off + 16 <= len(buf):
                length, msg_type, _flags, seq, _pid = struct.unpack_from("=IHHII", buf, off)
                if msg_type == NLMSG_ERROR and begin <= seq <= last:
                    (code,) = struct.unpack_from("=i", buf, off + 16)
                    if code:
                        where = "the batch" if seq == begin else f"message {seq - begin}"
                        errors.append(f"{where}: {os.strerror(-code)}")
                    elif seq == last:
                        done = True
                if length == 0:
                    break
                off += (length + 3) & ~3
        if errors:  # drop what else the kernel queued for this batch
            self.sock.setblocking(False)
            try:
                while self.sock.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
            finally:
                self.sock.setblocking(True)
            raise Refused(f"the kernel refused the batch ({len(errors)} error(s): {'; '.join(errors[:3])})")
