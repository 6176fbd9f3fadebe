"""Stale UDP conntrack entries: find them (pure) and delete them (the `conntrack` tool).

UDP has no connection teardown, so a client that keeps sending to a service IP keeps hitting
the conntrack entry that was DNATed to a pod that is gone. Like kube-proxy, after the new
rules are in the kernel we delete:
- for a UDP endpoint that went away or stopped serving, the entries DNATed to it from each of
  the service's IPs, and from its NodePort (one that is terminating but still serving keeps
  them, as in kube-proxy);
- for a UDP service port that went from no ready endpoint to some, the entries for the
  service's IPs/NodePort (they were blackholed by the reject rule and would stick there).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..state import EndpointInfo, ServicePortInfo, ServiceState

log = logging.getLogger("svcproxy.runtime.conntrack")


@dataclass
class Stale:
    endpoints: list[tuple[ServicePortInfo, EndpointInfo]] = field(default_factory=list)
    services: list[ServicePortInfo] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.endpoints or self.services)


def _has_ready(eps: Iterable[EndpointInfo]) -> bool:
    return any(e.ready for e in eps)


def stale_entries(old: ServiceState | None, new: ServiceState | None, out: Stale | None = None) -> Stale:
    """What conntrack state one service change leaves stale (kube-proxy's detectStaleConntrackEntries)."""
    out = out if out is not None else Stale()
    old_ports = {p.name: p for p in old.ports} if old else {}
    new_ports = {p.name: p for p in new.ports} if new else {}
    for name, port in old_ports.items():
        if port.protocol != "UDP":
            continue
        # kube-proxy's rule (conntrack.CleanStaleEntries): a flow is stale when its endpoint no
        # longer serves. Readiness, terminating and topology are not considered: a pod that is
        # terminating but still serving keeps its UDP flows, as its TCP connections keep going.
        serving_now = {ep.ip for ep in new.endpoints.get(name, ()) if ep.serving} if new and name in new_ports else set()
        for ep in old.endpoints.get(name, ()):  # type: ignore[union-attr]
            # An endpoint that was not serving got no traffic, so it has no entries to clear.
            if ep.serving and ep.ip not in serving_now:
                out.endpoints.append((port, ep))
    for name, port in new_ports.items():
        if port.protocol != "UDP":
            continue
        before = old.endpoints.get(name, ()) if old and name in old_ports else ()
        if _has_ready(new.endpoints.get(name, ())) and not _has_ready(before):  # type: ignore[union-attr]
            out.services.append(port)
    return out


def _service_ips(port: ServicePortInfo) -> list[str]:
    return list(dict.fromkeys([port.cluster_ip, *port.external_ips, *port.load_balancer_ips]))


@dataclass(frozen=True)
class Deletion:
    """One `conntrack -D` filter: UDP entries to this original port, and (when set) this original
    destination and this DNAT target. The same object gives the command and, after a listing,
    whether an entry would match it."""
    orig_port: int
    orig_dst: str = ""
    dst_nat: str = ""

    def argv(self, family: int) -> list[str]:
        return ["conntrack", "-D", *(["-f", "ipv6"] if family == 6 else []), "-p", "udp",
                *(["--orig-dst", self.orig_dst] if self.orig_dst else []), "--orig-port-dst", str(self.orig_port),
                *(["--dst-nat", self.dst_nat] if self.dst_nat else [])]

    def matches(self, entry: Entry) -> bool:
        return (entry.orig_dport == self.orig_port and self.orig_dst in ("", entry.orig_dst)
                and self.dst_nat in ("", entry.reply_src))


@dataclass(frozen=True)
class Entry:
    """A UDP conntrack entry as far as the deletions look at it."""
    orig_dst: str
    orig_dport: int
    reply_src: str


def deletions(stale: Stale) -> list[Deletion]:
    """What clears the stale entries: per stale endpoint its flows from each service IP and from
    the NodePort; per unblackholed service port every flow to it."""
    out: list[Deletion] = []
    for port, ep in stale.endpoints:
        out += [Deletion(port.port, ip, ep.ip) for ip in _service_ips(port)]
        if port.node_port:
            out.append(Deletion(port.node_port, dst_nat=ep.ip))
    for port in stale.services:
        out += [Deletion(port.port, ip) for ip in _service_ips(port)]
        if port.node_port:
            out.append(Deletion(port.node_port))
    return out


def commands(stale: Stale, family: int) -> list[list[str]]:
    """The `conntrack -D` invocations that clear the stale entries."""
    return [d.argv(family) for d in deletions(stale)]


# Above this many deletions, list the UDP entries once and run only the deletions that match
# one: a `conntrack -D` costs a process (~5 ms), and most stale endpoints have no flow at all.
# Found by bench/reliability: 2,000 changed objects meant 4,000 deletions, 17 s per sync.
LIST_FIRST = 8


def parse_entries(listing: str) -> list[Entry]:
    """`conntrack -L -p udp` lines -> entries (first src/dst/dport: original; second src: reply)."""
    out = []
    for line in listing.splitlines():
        fields: dict[str, list[str]] = {}
        for word in line.split():
            key, sep, value = word.partition("=")
            if sep:
                fields.setdefault(key, []).append(value)
        try:
            out.append(Entry(fields["dst"][0], int(fields["dport"][0]), fields["src"][1]))
        except (KeyError, IndexError, ValueError):
            continue
    return out


def needed(dels: list[Deletion], entries: list[Entry]) -> list[Deletion]:
    return [d for d in dels if any(d.matches(e) for e in entries)]


def clear(stale: Stale, family: int) -> int:
    """Run the deletions; returns how many commands ran. Failures are logged, never raised."""
    if not stale:
        return 0
    if shutil.which("conntrack") is None:
        log.warning("conntrack tool not found: stale UDP conntrack entries were not cleared")
        return 0
    dels = deletions(stale)
    if len(dels) > LIST_FIRST:
        listing = subprocess.run(["conntrack", "-L", *(["-f", "ipv6"] if family == 6 else []), "-p", "udp"],
                                 capture_output=True, text=True)
        if listing.returncode == 0:
            dels = needed(dels, parse_entries(listing.stdout))
    cmds = [d.argv(family) for d in dels]
    for cmd in cmds:
        res = subprocess.run(cmd, capture_output=True, text=True)
        # Exit status 1 with "0 flow entries" just means there was nothing to delete.
        if res.returncode not in (0, 1):
            log.warning("%s failed: %s", " ".join(cmd), res.stderr.strip())
    return len(cmds)
