"""The status page: what this node programmed for each Service and where its traffic goes.

Read-only and loopback by default (--status-bind-address 127.0.0.1:10263). Three parts:
- SyncLog: the last syncs, fed by the syncer's listeners;
- EndpointCounters: new connections per endpoint, counted from the kernel's conntrack table
  (each entry DNATed to an endpoint is one connection it received; works in every mode);
- snapshot(): a pure function of those and the programmed state -> the JSON the page polls.
The page itself (status_page.html) is one static file with its own script: nothing is fetched
from outside, and every value is put in the page as text, never as markup.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web

from ..state import EndpointInfo, ProxyState, ServicePortInfo

# svcproxy run's --status-bind-address: Kubernetes components use 10248-10260 (kubelet
# 10248/10250/10255, kube-proxy 10249/10256, controller-manager 10257, cloud-controller-manager
# 10258/10260, scheduler 10259)
DEFAULT_PORT = 10263
DEFAULT_BIND_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"

log = logging.getLogger("svcproxy.runtime.status")
PROTOCOLS = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP", socket.IPPROTO_SCTP: "SCTP"}


@dataclass
class SyncLog:
    """The last syncs, newest first: kind, when, how long, what changed."""

    size: int = 20
    entries: deque = field(default_factory=deque)

    def record(self, full: bool, seconds: float, changed: list[str], services: int, family: str = "") -> None:
        """family: "IPv4"/"IPv6" in a dual-stack daemon (each family syncs on its own)."""
        self.entries.appendleft({"time": time.time(), "kind": "full" if full else "partial", "family": family,
                                 "ms": round(seconds * 1e3, 1), "services": services,
                                 "changed": changed[:10], "changed_count": len(changed)})
        while len(self.entries) > self.size:
            self.entries.pop()


class EndpointCounters:
    """Connections (and packets) each endpoint received since the daemon started, from conntrack.

    A poll lists the table; an entry id not seen in the previous poll is a new connection to
    the address its reply comes from. Entries live for at least the protocol's timeout (UDP
    30 s, TCP TIME_WAIT 120 s), so polls a few seconds apart miss none. Packets are counted
    where the kernel keeps them (net.netfilter.nf_conntrack_acct=1; off by default): the
    growth of each entry's original-direction count between polls."""

    def __init__(self, dump: Callable[[], list[tuple[int, str, int, str, int | None]]] | None = None,
                 extra: Callable[[], dict[tuple[str, int, str], int]] | None = None) -> None:
        self.dump = dump or conntrack_entries
        # ebpf mode: running totals per (ip, port, proto) from the BPF counter map; connections
        # the socket hooks sent have no DNAT, so no conntrack entry tells of them
        self.extra = extra
        self.extra_base: dict[tuple[str, int, str], int] | None = None
        self.extra_now: dict[tuple[str, int, str], int] = {}
        self.totals: dict[tuple[str, int, str], int] = {}
        self.packets: dict[tuple[str, int, str], int] = {}
        self.live: dict[int, int] = {}  # conntrack id -> packets seen at the last poll
        self.has_packets = False
        self.polled = 0.0
        self.error = ""

    def poll(self) -> None:
        self._poll_conntrack()
        if self.extra is not None:
            try:
                self.extra_now = self.extra()
            except OSError as e:
                self.error = f"cannot read the BPF counters: {e}"
            if self.extra_base is None:
                self.extra_base = dict(self.extra_now)

    def _poll_conntrack(self) -> None:
        try:
            entries = self.dump()
        except Exception as e:  # no conntrack support here: the page says so, the rest works
            self.error = f"cannot read conntrack: {e}"
            return
        self.error = ""
        live: dict[int, int] = {}
        for cid, ip, port, proto, packets in entries:
            key = (ip, port, proto)
            if cid not in self.live:
                self.totals[key] = self.totals.get(key, 0) + 1
            if packets is not None:
                self.has_packets = True
                self.packets[key] = self.packets.get(key, 0) + max(0, packets - self.live.get(cid, 0))
            live[cid] = packets or 0
        self.live = live
        self.polled = time.time()

    def connections(self, ip: str, port: int, proto: str) -> int:
        key = (ip, port, proto)
        by_bpf = self.extra_now.get(key, 0) - (self.extra_base or {}).get(key, 0)
        return self.totals.get(key, 0) + max(0, by_bpf)

    def packets_to(self, ip: str, port: int, proto: str) -> int | None:
        return self.packets.get((ip, port, proto), 0) if self.has_packets else None


def conntrack_entries() -> list[tuple[int, str, int, str, int | None]]:
    """(id, reply source address and port, protocol, packets or None) of each DNATed entry."""
    from pyroute2 import Conntrack

    out = []
    with Conntrack() as ct:
        for m in ct.dump():
            orig, reply = m.get_attr("CTA_TUPLE_ORIG"), m.get_attr("CTA_TUPLE_REPLY")
            oproto, rproto = orig.get_attr("CTA_TUPLE_PROTO"), reply.get_attr("CTA_TUPLE_PROTO")
            proto = PROTOCOLS.get(oproto.get_attr("CTA_PROTO_NUM"))
            oip, rip = orig.get_attr("CTA_TUPLE_IP"), reply.get_attr("CTA_TUPLE_IP")
            dst = oip.get_attr("CTA_IP_V4_DST") or oip.get_attr("CTA_IP_V6_DST")
            src = rip.get_attr("CTA_IP_V4_SRC") or rip.get_attr("CTA_IP_V6_SRC")
            sport, dport = rproto.get_attr("CTA_PROTO_SRC_PORT"), oproto.get_attr("CTA_PROTO_DST_PORT")
            if proto and (src, sport) != (dst, dport):  # DNATed: the reply comes from the endpoint
                counters = m.get_attr("CTA_COUNTERS_ORIG")
                packets = counters.get_attr("CTA_COUNTERS_PACKETS") if counters else None
                out.append((m.get_attr("CTA_ID"), src, sport, proto, packets))
    return out


def service_type(port: ServicePortInfo) -> str:
    if port.load_balancer_ips or port.health_check_node_port:
        return "LoadBalancer"
    return "NodePort" if port.node_port else "ClusterIP"


def _endpoint(ep: EndpointInfo, proto: str, counters: EndpointCounters) -> dict[str, Any]:
    return {"ip": ep.ip, "port": ep.port, "ready": ep.ready, "serving": ep.serving, "terminating": ep.terminating,
            "local": ep.is_local, "node": ep.node_name, "connections": counters.connections(ep.ip, ep.port, proto),
            "packets": counters.packets_to(ep.ip, ep.port, proto)}


def snapshot(state: ProxyState | Sequence[ProxyState], counters: EndpointCounters, syncs: SyncLog,
             problems: dict[str, dict[str, str]], mode: str, node: str) -> dict[str, Any]:
    """Everything the page shows, as plain data (the page puts it in as text). state: one per
    IP family the daemon programs; a dual-stack Service lists its ports of both families."""
    states = [state] if isinstance(state, ProxyState) else list(state)
    services = []
    for key in sorted({k for one in states for k in one.services}):
        mine = [(one, one.services[key]) for one in states if key in one.services]
        ports = []
        for one, st in mine:
            for p in st.ports:
                eps = one.endpoints(p.name)
                ports.append({
                    "name": p.name.port, "protocol": p.protocol, "cluster_ip": p.cluster_ip, "port": p.port,
                    "node_port": p.node_port, "external_ips": list(p.external_ips), "lb_ips": list(p.load_balancer_ips),
                    "external_policy": "Local" if p.external_policy_local else "Cluster",
                    "internal_policy": "Local" if p.internal_policy_local else "Cluster",
                    "affinity_seconds": p.session_affinity_timeout,
                    "endpoints": [_endpoint(e, p.protocol, counters) for e in eps]})
        services.append({"key": key, "type": service_type(mine[0][1].ports[0]), "ports": ports})
    bad = sorted({m for per_source in problems.values() for m in per_source.values()})
    return {"node": node, "mode": mode, "time": time.time(), "counters_error": counters.error,
            "services": services, "syncs": list(syncs.entries), "problems": bad}


def live_rules(mode: str, family: int = 4) -> str:
    """This node's ruleset of one family as the kernel holds it, for the trace form."""
    if mode == "userspace":
        raise ValueError("userspace mode programs no netfilter rules: there is nothing to trace")
    cmd = [("ip6tables-save" if family == 6 else "iptables-save")] if mode == "iptables" else ["nft", "list", "ruleset"]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout


def trace_answer(rules: str, form: dict[str, Any], local: list[str]) -> dict[str, Any]:
    """The tracer's answer for the form: text, outcomes, and the picture as a data: URL (an
    <img> never runs script, whatever the SVG held)."""
    from ..netfilter import TraceError, render_svg, render_text, trace_packet

    try:
        port = int(form.get("port", 0))
        result = trace_packet(rules, str(form.get("source", "")), str(form.get("destination", "")), port,
                              str(form.get("protocol", "TCP")).upper(), local)
    except (TraceError, ValueError) as e:
        return {"error": str(e)}
    svg = base64.b64encode(render_svg(result).encode()).decode()
    return {"text": render_text(result, color=False), "outcomes": [o.to_dict() for o in result.outcomes],
            "picture": f"data:image/svg+xml;base64,{svg}"}


class StatusServer:
    """The aiohttp app of the page; reads the daemon's state, changes nothing."""

    def __init__(self, state: Callable[[], ProxyState | Sequence[ProxyState]], problems: Callable[[], dict[str, dict[str, str]]],
                 mode: str, node: str, local: list[str], counters: EndpointCounters | None = None) -> None:
        self.state, self.problems, self.mode, self.node, self.local = state, problems, mode, node, local
        self.counters = counters or EndpointCounters()
        self.syncs = SyncLog()
        self._poll_lock = asyncio.Lock()

    async def _fresh_counters(self) -> None:
        async with self._poll_lock:
            if time.time() - self.counters.polled >= 0.5:
                await asyncio.to_thread(self.counters.poll)

    def app(self) -> web.Application:
        page = resources.files("svcproxy.runtime").joinpath("status_page.html").read_text()

        async def index(request: web.Request) -> web.Response:
            return web.Response(text=page, content_type="text/html", headers=_SAFE_HEADERS)

        async def status(request: web.Request) -> web.Response:
            await self._fresh_counters()
            body = snapshot(self.state(), self.counters, self.syncs, self.problems(), self.mode, self.node)
            return web.json_response(body, headers=_SAFE_HEADERS)

        async def trace(request: web.Request) -> web.Response:
            try:
                form = await request.json()
                family = 6 if ":" in str(form.get("destination", "") if isinstance(form, dict) else "") else 4
                rules = await asyncio.to_thread(live_rules, self.mode, family)
            except (ValueError, subprocess.SubprocessError, OSError) as e:
                return web.json_response({"error": str(e)}, headers=_SAFE_HEADERS)
            answer = await asyncio.to_thread(trace_answer, rules, form if isinstance(form, dict) else {}, self.local)
            return web.json_response(answer, headers=_SAFE_HEADERS)

        app = web.Application(client_max_size=16 * 1024)
        app.router.add_get("/", index)
        app.router.add_get("/api/status", status)
        app.router.add_post("/api/trace", trace)
        return app


# The page loads nothing from elsewhere and may not be framed by other sites.
_SAFE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                                            "script-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
                 "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
