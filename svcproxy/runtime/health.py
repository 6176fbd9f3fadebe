"""Health endpoints as kube-proxy serves them.

- /healthz and /livez on --healthz-bind-address: 200 while the rules are fresh, 503 when a
  change has been waiting longer than twice the sync period (kube-proxy's healthTimeout), and
  /healthz also when this Node is being deleted or was never seen; the JSON body is 1.36's
  (RFC 3339 times, "healthy", a "status" per IP family).
- /metrics, /proxyMode and a plain /healthz on --metrics-bind-address, as kube-proxy's.
- one HTTP server per healthCheckNodePort (LoadBalancer services with externalTrafficPolicy
  Local): 200 while this node has ready local endpoints for the service, 503 with none, so the
  cloud load balancer sends traffic only to nodes that can serve it locally.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..config import NodeConfig
from ..state import ProxyState
from .metrics import Metrics
from .status import DEFAULT_PORT, StatusServer

log = logging.getLogger("svcproxy.runtime.health")


def go_time(t: float | None) -> str:
    """A timestamp as Go's encoding/json writes a time.Time: RFC 3339 with nanoseconds, trailing
    zeros dropped, in UTC (kube-proxy's JSON carries these strings); None is Go's zero time."""
    if t is None:
        return "0001-01-01T00:00:00Z"
    ns = round(t * 1e9)
    secs, frac = divmod(ns, 10**9)
    base = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    """'0.0.0.0:10256', '[::]:10256', ':10256' or a bare host -> (host, port)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest.lstrip(":") or default_port)
    if address.count(":") == 1:
        host, port = address.split(":")
        return host or "0.0.0.0", int(port)
    return address or "0.0.0.0", default_port


@dataclass
class FamilyHealth:
    """One IP family's sync loop, as the health server sees it."""

    name: str  # "IPv4" or "IPv6"
    timeout: Callable[[], float]  # 2 x the (possibly stretched) full sync interval
    last_updated: Callable[[], float | None]  # wall time of the last successful sync (or of the loop's start)
    pending_since: Callable[[], float | None]  # monotonic time of the oldest unprogrammed change

    def healthy(self) -> bool:
        """kube-proxy's rule: unhealthy once a queued change has waited healthTimeout or longer."""
        since = self.pending_since()
        return since is None or time.monotonic() - since < self.timeout()


def node_eligible(eligible: Mapping[str, bool], name: str, watched: bool) -> bool:
    """kube-proxy's NodeEligible: false for a Node being deleted or tainted for deletion, and
    for a Node it never saw. Only a source that watches Nodes (the API) can know one is
    missing; with manifests alone a Node absent from them says nothing, so it is eligible."""
    if name in eligible:
        return eligible[name]
    return not watched


@dataclass
class ProxierHealth:
    """kube-proxy's ProxyHealthServer, fed by one syncer per IP family."""

    families: list[FamilyHealth]
    node_eligible: Callable[[], bool] = lambda: True

    def healthy(self) -> bool:
        return not self.failing()

    def failing(self) -> list[str]:
        """The families with a change waiting longer than their timeout."""
        return [f.name for f in self.families if not f.healthy()]

    def last_updated(self) -> float | None:
        """The most recent family's last update (kube-proxy's top-level lastUpdated, kept for
        backward compatibility), whatever the families' health."""
        times = [t for f in self.families if (t := f.last_updated()) is not None]
        return max(times) if times else None

    def document(self, now: float, eligible: bool | None) -> tuple[bool, dict[str, Any]]:
        """(healthy, the JSON object) as kube-proxy's /healthz (eligible given) or /livez
        (eligible None) writes it; keys in Go's struct order. While healthy, lastUpdated is
        now, as older releases said when the sync loop last ran."""
        status = {f.name: {"lastUpdated": go_time(f.last_updated()), "healthy": f.healthy()}
                  for f in sorted(self.families, key=lambda f: f.name) if f.last_updated() is not None}
        healthy = all(s["healthy"] for s in status.values()) and eligible is not False
        doc: dict[str, Any] = {"lastUpdated": go_time(now if healthy else self.last_updated()),
                               "currentTime": go_time(now)}
        if eligible is not None:
            doc["nodeEligible"] = eligible
        doc["healthy"] = all(s["healthy"] for s in status.values())
        if status:
            doc["status"] = status
        return healthy, doc


async def _serve(app: web.Application, host: str | Sequence[str], port: int) -> web.AppRunner:
    """Serve app on port at each host (one or several); if one cannot listen, none does."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        for h in [host] if isinstance(host, str) else host:
            await web.TCPSite(runner, h, port, reuse_address=True).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def healthz_app(health: ProxierHealth, metrics: Metrics | None) -> web.Application:
    """/healthz (node eligibility included) and /livez (the sync loops only), 200 or 503."""

    def answer(eligible: bool | None, counter: str) -> web.Response:
        ok, doc = health.document(time.time(), eligible)
        if metrics:
            getattr(metrics, counter).labels(code="200" if ok else "503").inc()
        return _json(json.dumps(doc, separators=(",", ":")), 200 if ok else 503)

    async def healthz(request: web.Request) -> web.Response:
        return answer(health.node_eligible(), "healthz_total")

    async def livez(request: web.Request) -> web.Response:
        return answer(None, "livez_total")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    return app


def _json(body: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
    # exactly "application/json", as Go writes it (aiohttp would add a charset)
    h = {"Content-Type": "application/json", "X-Content-Type-Options": "nosniff", **(headers or {})}
    return web.Response(body=body.encode(), status=status, headers=h)


async def serve_healthz(address: str, health: ProxierHealth, metrics: Metrics | None) -> web.AppRunner:
    host, port = split_host_port(address, 10256)
    return await _serve(healthz_app(health, metrics), host, port)


def health_check_hosts(cfg: NodeConfig) -> tuple[str, ...]:
    """Where one family's health-check node ports listen, as in kube-proxy: the addresses of
    this family that --nodeport-addresses selects, or the family's any-address when it selects
    none (no CIDR of this family given: kube-proxy then matches all, 0.0.0.0/0 or ::/0)."""
    return cfg.nodeport_ips or (("::",) if cfg.ip_family == 6 else ("0.0.0.0",))


class ServiceHealth:
    """One IP family's health-check node ports, opened and closed as services come and go. A
    dual-stack daemon has one per family (kube-proxy: one per proxier), each counting its own
    family's local endpoints and listening on its own family's addresses (IPv6 sockets are
    IPv6-only, so both bind the same port)."""

    def __init__(self, health: ProxierHealth, hosts: Sequence[str] = ("0.0.0.0",),
                 on_listen_error: Callable[[str, int, OSError], None] | None = None) -> None:
        """on_listen_error(service key, port, error): a port could not be opened (the daemon
        records kube-proxy's FailedToStartServiceHealthcheck Event)."""
        self.health = health
        self.hosts = tuple(hosts)
        self.on_listen_error = on_listen_error
        self.counts: dict[str, int] = {}  # service key -> ready local endpoints
        self.ports: dict[str, int] = {}  # service key -> its healthCheckNodePort
        self.servers: dict[int, tuple[str, web.AppRunner]] = {}  # port -> (service key, runner)
        self.wanted: dict[int, str] = {}

    @classmethod
    def for_family(cls, health: ProxierHealth, cfg: NodeConfig) -> ServiceHealth:
        """The health-check node ports of cfg's family, on health_check_hosts(cfg)."""
        return cls(health, health_check_hosts(cfg))

    def update(self, state: ProxyState, changed: Collection[str] | None = None) -> None:
        """Recompute ports and local endpoint counts of the changed services (all if None); no I/O."""
        keys = state.services.keys() if changed is None else changed
        if changed is None:
            self.ports.clear()
            self.counts.clear()
        for key in keys:
            self.ports.pop(key, None)
            self.counts.pop(key, None)
            svc = state.services.get(key)
            port = next((p.health_check_node_port for p in svc.ports if p.health_check_node_port), 0) if svc else 0
            if not port:
                continue
            self.ports[key] = port
            self.counts[key] = len({e.ip for eps in svc.endpoints.values() for e in eps if e.is_local and e.ready})
        self.wanted = {port: key for key, port in self.ports.items()}

    async def reconcile(self) -> None:
        """Open listeners for new health-check ports, close the ones no longer wanted."""
        for port, (key, runner) in list(self.servers.items()):
            if self.wanted.get(port) != key:
                await runner.cleanup()
                del self.servers[port]
        for port, key in self.wanted.items():
            if port in self.servers:
                continue
            try:
                self.servers[port] = (key, await _serve(self._app(key), self.hosts, port))
            except OSError as e:
                log.error("service %s: cannot listen on healthCheckNodePort %d (%s): %s", key, port,
                          ", ".join(self.hosts), e)
                if self.on_listen_error is not None:
                    self.on_listen_error(key, port, e)

    def _app(self, key: str) -> web.Application:
        ns, name = key.split("/", 1)

        async def handle(request: web.Request) -> web.Response:
            count = self.counts.get(key, 0)
            healthy = self.health.healthy()
            body = (f'{{\n\t"service": {{\n\t\t"namespace": {json.dumps(ns)},\n\t\t"name": {json.dumps(name)}\n\t}},\n'
                    f'\t"localEndpoints": {count},\n\t"serviceProxyHealthy": {"true" if healthy else "false"}\n}}')
            return _json(body, 200 if count and healthy else 503,
                         {"X-Load-Balancing-Endpoint-Weight": str(count)})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    async def close(self) -> None:
        for _, runner in self.servers.values():
            await runner.cleanup()
        self.servers.clear()


def metrics_app(metrics: Metrics, mode: str) -> web.Application:
    """The metrics port as kube-proxy's serveMetrics sets it up: /metrics, /proxyMode, and the
    generic /healthz ("ok" once the process serves; no /livez there)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    text = {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"}

    async def handle_metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def proxy_mode(request: web.Request) -> web.Response:
        return web.Response(text=mode, headers=text)

    async def healthz(request: web.Request) -> web.Response:
        verbose = "verbose" in request.query
        return web.Response(text="[+]ping ok\nhealthz check passed\n" if verbose else "ok", headers=text)

    app = web.Application()
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/proxyMode", proxy_mode)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/healthz/ping", healthz)
    return app


async def serve_metrics(address: str, metrics: Metrics, mode: str) -> web.AppRunner:
    host, port = split_host_port(address, 10249)
    return await _serve(metrics_app(metrics, mode), host, port)


async def serve_status(address: str, status: StatusServer) -> web.AppRunner:
    host, port = split_host_port(address, DEFAULT_PORT)
    return await _serve(status.app(), host, port)
