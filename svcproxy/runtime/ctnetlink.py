"""The few ctnetlink requests the UDP conntrack reconcile needs: dump one family's UDP entries,
delete one entry. Own encoding and decoding with struct, as for nf_tables (dataplane/nftables/
session.py): pyroute2 took 8 s to decode 20,000 entries, this about a tenth of a second, which
matters because the reconcile runs before a sync counts as done.
"""

from __future__ import annotations

import errno
import itertools
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ..nfnl import answers

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 1, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_ZONE, CTA_FILTER = 1, 2, 18, 25
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_FILTER_ORIG_FLAGS = 1
CTA_FILTER_FLAG_CTA_PROTO_NUM = 1 << 3
IPPROTO_UDP = 17


class CtnetlinkError(OSError):
    pass


@dataclass(frozen=True)
class Tuple:
    """One direction of a conntrack entry."""
    src: str
    dst: str
    sport: int
    dport: int
    proto: int


@dataclass(frozen=True)
class Flow:
    orig: Tuple
    reply: Tuple
    zone: int | None = None


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _attrs(data: bytes) -> dict[int, bytes]:
    """Payload by attribute type (flag bits dropped); a loop, not a generator: this runs
    about ten times per entry, on tables of tens of thousands."""
    out = {}
    off, end = 0, len(data)
    unpack = struct.unpack_from
    while off + 4 <= end:
        length, kind = unpack("=HH", data, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[off + 4:off + length]
        off += (length + 3) & ~3
    return out


def _tuple(data: bytes, af: int) -> Tuple:
    top = _attrs(data)
    ip, proto = _attrs(top.get(CTA_TUPLE_IP, b"")), _attrs(top.get(CTA_TUPLE_PROTO, b""))
    v6 = af == socket.AF_INET6
    src, dst = ip.get(3 if v6 else 1), ip.get(4 if v6 else 2)
    sport, dport = proto.get(CTA_PROTO_SRC_PORT, b"\0\0"), proto.get(CTA_PROTO_DST_PORT, b"\0\0")
    return Tuple(socket.inet_ntop(af, src) if src else "", socket.inet_ntop(af, dst) if dst else "",
                 (sport[0] << 8) | sport[1], (dport[0] << 8) | dport[1], proto.get(CTA_PROTO_NUM, b"\0")[0])


def _encode_tuple(t: Tuple, af: int) -> bytes:
    v6 = af == socket.AF_INET6
    ip = (_attr(3 if v6 else 1, socket.inet_pton(af, t.src)) + _attr(4 if v6 else 2, socket.inet_pton(af, t.dst)))
    proto = (_attr(CTA_PROTO_NUM, bytes([t.proto])) + _attr(CTA_PROTO_SRC_PORT, struct.pack(">H", t.sport))
             + _attr(CTA_PROTO_DST_PORT, struct.pack(">H", t.dport)))
    return _attr(CTA_TUPLE_IP | NLA_F_NESTED, ip) + _attr(CTA_TUPLE_PROTO | NLA_F_NESTED, proto)


class Conntrack:
    """One ctnetlink socket for one address family (4 or 6)."""

    def __init__(self, family: int) -> None:
        self.af = socket.AF_INET6 if family == 6 else socket.AF_INET
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self._seq = itertools.count(1)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conntrack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, msg_type: int, flags: int, payload: bytes) -> int:
        seq = next(self._seq)
        body = struct.pack("=BBH", self.af, 0, 0) + payload  # nfgenmsg: family, version, res_id
        header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | msg_type, flags, seq, 0)
        self.sock.send(header + body)
        return seq

    def _answers(self, seq: int) -> Iterator[tuple[int, bytes]]:
        """(message type, payload after the nfgenmsg) of the answers to seq, until done or acked."""
        return answers(self.sock, seq, CtnetlinkError)

    def udp_flows(self) -> list[Flow]:
        """Every UDP entry of the family; the kernel filters by protocol (5.8+), and so do we."""
        orig = _attr(CTA_TUPLE_PROTO | NLA_F_NESTED, _attr(CTA_PROTO_NUM, bytes([IPPROTO_UDP])))
        request = (_attr(CTA_TUPLE_ORIG | NLA_F_NESTED, orig) + _attr(
            CTA_FILTER | NLA_F_NESTED, _attr(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", CTA_FILTER_FLAG_CTA_PROTO_NUM))))
        try:
            answers = list(self._answers(self._send(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, request)))
        except CtnetlinkError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            # an older kernel without dump filters: everything, filtered here
            answers = list(self._answers(self._send(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, b"")))
        out = []
        for _kind, payload in answers:
            attrs = _attrs(payload)
            orig, reply, zone = attrs.get(CTA_TUPLE_ORIG), attrs.get(CTA_TUPLE_REPLY), attrs.get(CTA_ZONE)
            if orig is None or reply is None:
                continue
            orig_t = _tuple(orig, self.af)
            if orig_t.proto == IPPROTO_UDP:
                out.append(Flow(orig_t, _tuple(reply, self.af), struct.unpack(">H", zone[:2])[0] if zone else None))
        return out

    def delete(self, flow: Flow) -> bool:
        """Delete one entry by its original tuple (and zone); False if it was already gone."""
        payload = _attr(CTA_TUPLE_ORIG | NLA_F_NESTED, _encode_tuple(flow.orig, self.af))
        if flow.zone is not None:
            payload += _attr(CTA_ZONE, struct.pack(">H", flow.zone))
        try:
            for _ in self._answers(self._send(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, payload)):
                pass
        except CtnetlinkError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True
