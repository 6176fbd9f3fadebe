"""kube-proxy's nfacct counters, read over netfilter netlink (NFNL_SUBSYS_ACCT).

In iptables mode kube-proxy 1.36 counts two things with nfacct objects its rules update
(`-m nfacct --nfacct-name ...`) and exports them as counters:
- kubeproxy_iptables_ct_state_invalid_dropped_packets_total (ct_state_invalid_dropped_pkts);
- kubeproxy_iptables_localhost_nodeports_accepted_packets_total (localhost_nps_accepted_pkts).
As in kube-proxy, a family is only exported while its nfacct object exists: reading one that
is missing (rules that do not use it, a kernel without nfacct) yields nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Iterator

log = logging.getLogger("svcproxy.runtime.nfacct")

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ACCT = 7
NFNL_MSG_ACCT_GET = 1
NFACCT_NAME, NFACCT_PKTS = 1, 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
COUNTERS = {  # nfacct object -> (family, help), kube-proxy's names
    "ct_state_invalid_dropped_pkts": ("kubeproxy_iptables_ct_state_invalid_dropped_packets",
                                      "packets dropped by iptables to work around conntrack problems"),
    "localhost_nps_accepted_pkts": ("kubeproxy_iptables_localhost_nodeports_accepted_packets",
                                    "Number of packets accepted on nodeports of loopback interface"),
}


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("HH", length, kind) + data + b"\0" * (-length % 4)


def get_request(name: str, seq: int = 1) -> bytes:
    """An NFNL_MSG_ACCT_GET for one named object."""
    payload = struct.pack("BBH", socket.AF_UNSPEC, 0, 0) + _attr(NFACCT_NAME, name.encode() + b"\0")
    return struct.pack("IHHII", 16 + len(payload), NFNL_SUBSYS_ACCT << 8 | NFNL_MSG_ACCT_GET,
                       NLM_F_REQUEST | NLM_F_ACK, seq, 0) + payload


def parse_packets(reply: bytes) -> int | None:
    """The packet count in a reply to get_request; None for an error (ENOENT: no such object)."""
    offset = 0
    while offset + 16 <= len(reply):
        length, kind = struct.unpack_from("IH", reply, offset)
        if kind == NLMSG_ERROR:
            return None
        attrs = offset + 16 + 4  # after the nfgenmsg
        while attrs + 4 <= offset + length:
            alen, akind = struct.unpack_from("HH", reply, attrs)
            if akind & 0x3FFF == NFACCT_PKTS:
                return struct.unpack_from(">Q", reply, attrs + 4)[0]
            attrs += (alen + 3) & ~3
        offset += (length + 3) & ~3
    return None


def read_packets(name: str) -> int | None:
    """One nfacct object's packets in this network namespace; None when it is not there."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as s:
            s.settimeout(2)
            s.bind((0, 0))
            s.send(get_request(name, os.getpid() & 0xFFFF))
            return parse_packets(s.recv(65536))
    except OSError as e:
        log.debug("nfacct %s: %s", name, e)
        return None


NFNL_MSG_ACCT_NEW = 0
NLM_F_CREATE = 0x400


def new_request(name: str, seq: int = 1) -> bytes:
    """An NFNL_MSG_ACCT_NEW creating one named object (counters from 0)."""
    payload = struct.pack("BBH", socket.AF_UNSPEC, 0, 0) + _attr(NFACCT_NAME, name.encode() + b"\0")
    return struct.pack("IHHII", 16 + len(payload), NFNL_SUBSYS_ACCT << 8 | NFNL_MSG_ACCT_NEW,
                       NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE, seq, 0) + payload


def ack_error(reply: bytes) -> int:
    """The errno of a netlink ack (0: done), -1 when the reply is not an ack."""
    if len(reply) >= 20 and struct.unpack_from("IH", reply)[1] == NLMSG_ERROR:
        return -struct.unpack_from("i", reply, 16)[0]
    return -1


def ensure(name: str) -> bool:
    """kube-proxy's nfacct Ensure: create the object unless it exists; False when the kernel has
    no nfacct (or refuses), and then no rule may use it."""
    if read_packets(name) is not None:
        return True
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as s:
            s.settimeout(2)
            s.bind((0, 0))
            s.send(new_request(name, os.getpid() & 0xFFFF))
            err = ack_error(s.recv(65536))
    except OSError as e:
        log.info("nfacct %s cannot be created (%s): its metric stays absent", name, e)
        return False
    if err:
        log.info("nfacct %s cannot be created (%s): its metric stays absent", name, os.strerror(err))
    return err == 0


def ensure_counters() -> tuple[str, ...]:
    """kube-proxy's two nfacct objects, created where missing; the names that exist."""
    return tuple(name for name in COUNTERS if ensure(name))


class NfacctCollector:
    """kube-proxy's nfacct counter families (iptables mode), one sample each while the object exists."""

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily

        for counter, (family, help_text) in COUNTERS.items():
            packets = read_packets(counter)
            if packets is not None:
                yield CounterMetricFamily(family, help_text, value=packets)

    def describe(self) -> list:
        return []  # read at scrape time only: nothing to check at registration
