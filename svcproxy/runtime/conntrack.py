"""Stale UDP conntrack entries: kube-proxy 1.36's reconciler (conntrack.CleanStaleEntries).

UDP has no connection teardown, so a client that keeps sending to a service IP keeps hitting
the conntrack entry that was DNATed to a pod that is gone (or, sent before the service had
endpoints, was never DNATed at all). Like kube-proxy 1.36, after a sync that changed a UDP
service (the first sync included, so flows to pods removed while the proxy was down are
cleared after a restart), the whole UDP table of the family is read over netlink and every
entry is deleted whose original destination is a service IP:port or a NodePort of a UDP service
port that has serving endpoints, and whose reply source is not one of them.

The decision (which entries are stale) is pure; reading and deleting go through ctnetlink
(ctnetlink.py), or the `conntrack` tool where netlink is not available.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ..state import ProxyState, ServiceState
from . import ctnetlink

log = logging.getLogger("svcproxy.runtime.conntrack")

@dataclass(frozen=True)
class Entry:
    """A UDP conntrack entry as far as the reconciler looks at it (both tuples' addresses)."""
    orig_src: str
    orig_dst: str
    orig_sport: int
    orig_dport: int
    reply_src: str
    reply_sport: int


@dataclass(frozen=True)
class Frontends:
    """Per UDP service frontend, the serving endpoints whose flows may stay."""
    by_ip: dict[tuple[str, int], frozenset[tuple[str, int]]]  # (service IP, port) -> endpoints
    by_node_port: dict[int, frozenset[tuple[str, int]]]  # NodePort -> endpoints


def frontends(state: ProxyState) -> Frontends:
    """The UDP frontends of the desired state. A port without serving endpoints is left out:
    its flows are not DNATed anywhere, and clearing them would change nothing."""
    by_ip: dict[tuple[str, int], frozenset[tuple[str, int]]] = {}
    by_node_port: dict[int, frozenset[tuple[str, int]]] = {}
    for svc in state.services.values():
        for port in svc.ports:
            if port.protocol != "UDP":
                continue
            serving = frozenset((_norm(ep.ip), ep.port) for ep in svc.endpoints.get(port.name, ()) if ep.serving)
            if not serving:
                continue
            for ip in (port.cluster_ip, *port.load_balancer_ips, *port.external_ips):
                by_ip[(_norm(ip), port.port)] = serving
            if port.node_port:
                by_node_port[port.node_port] = serving
    return Frontends(by_ip, by_node_port)


def stale(entries: Iterable[Entry], fronts: Frontends) -> list[Entry]:
    """The entries to delete: to a UDP frontend, answered by none of its serving endpoints."""
    out = []
    for e in entries:
        backend = (_norm(e.reply_src), e.reply_sport)
        allowed = fronts.by_ip.get((_norm(e.orig_dst), e.orig_dport))
        if allowed is None:
            allowed = fronts.by_node_port.get(e.orig_dport)
        if allowed is not None and backend not in allowed:
            out.append(e)
    return out


def needs_reconcile(old: ProxyState | None, new: ProxyState, changed: Iterable[str] | None) -> bool:
    """kube-proxy reconciles when any service with a UDP port changed (every service does on
    the first sync, old None); TCP-only changes leave the table alone."""
    if old is None:
        return any(_has_udp(s) for s in new.services.values())
    keys = set(old.services) | set(new.services) if changed is None else set(changed)
    for key in keys:
        before, after = old.services.get(key), new.services.get(key)
        if before != after and (_has_udp(before) or _has_udp(after)):
            return True
    return False


def _has_udp(svc: ServiceState | None) -> bool:
    return svc is not None and any(p.protocol == "UDP" for p in svc.ports)


def _norm(ip: str) -> str:
    """One spelling per address (IPv6 may be written many ways)."""
    if ":" not in ip:
        return ip
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, ip))
    except OSError:
        return ip


@dataclass(frozen=True)
class Reconciled:
    deleted: int
    seconds: float


def reconcile(state: ProxyState, family: int) -> Reconciled:
    """List the family's UDP entries, delete the stale ones; failures are logged, not raised."""
    start = time.perf_counter()
    fronts = frontends(state)
    deleted = 0
    if fronts.by_ip or fronts.by_node_port:
        try:
            deleted = _Netlink(family).reconcile(fronts)
        except OSError as e:
            log.debug("conntrack over netlink failed (%s); using the conntrack tool", e)
            deleted = _Tool(family).reconcile(fronts)
    seconds = time.perf_counter() - start
    if deleted:
        log.info("IPv%d conntrack: deleted %d stale UDP entr%s in %.1f ms", family, deleted,
                 "y" if deleted == 1 else "ies", seconds * 1e3)
    return Reconciled(deleted, seconds)


class _Netlink:
    """ctnetlink (ctnetlink.py): one dump of the UDP entries, one delete per stale entry."""

    def __init__(self, family: int) -> None:
        self.family = family

    def reconcile(self, fronts: Frontends) -> int:
        with ctnetlink.Conntrack(self.family) as ct:
            flows = {Entry(f.orig.src, f.orig.dst, f.orig.sport, f.orig.dport, f.reply.src, f.reply.sport): f
                     for f in ct.udp_flows()}
            deleted = 0
            for entry in stale(flows, fronts):
                try:
                    deleted += ct.delete(flows[entry])  # False: gone meanwhile (timed out)
                except OSError as err:
                    log.warning("conntrack: deleting %s failed: %s", entry, err)
            return deleted


class _Tool:
    """The same through the `conntrack` tool: one listing, one exact `-D` per stale entry."""

    def __init__(self, family: int) -> None:
        self.fam = ["-f", "ipv6"] if family == 6 else []

    def reconcile(self, fronts: Frontends) -> int:
        if shutil.which("conntrack") is None:
            log.warning("conntrack: neither netlink nor the conntrack tool works: stale UDP entries stay")
            return 0
        listing = subprocess.run(["conntrack", "-L", *self.fam, "-p", "udp"], capture_output=True, text=True)
        if listing.returncode != 0:
            log.warning("conntrack -L failed: %s", listing.stderr.strip())
            return 0
        deleted = 0
        for e in stale(parse_entries(listing.stdout), fronts):
            res = subprocess.run(["conntrack", "-D", *self.fam, "-p", "udp", "--orig-src", e.orig_src,
                                  "--orig-dst", e.orig_dst, "--orig-port-src", str(e.orig_sport),
                                  "--orig-port-dst", str(e.orig_dport)], capture_output=True, text=True)
            deleted += res.returncode == 0
        return deleted


def parse_entries(listing: str) -> list[Entry]:
    """`conntrack -L -p udp` lines -> entries (first src/dst/sport/dport: original; second: reply)."""
    out = []
    for line in listing.splitlines():
        fields: dict[str, list[str]] = {}
        for word in line.split():
            key, sep, value = word.partition("=")
            if sep:
                fields.setdefault(key, []).append(value)
        try:
            out.append(Entry(fields["src"][0], fields["dst"][0], int(fields["sport"][0]), int(fields["dport"][0]),
                             fields["src"][1], int(fields["sport"][1])))
        except (KeyError, IndexError, ValueError):
            continue
    return out
