"""The Kubernetes API source: list then watch Services, EndpointSlices, this node's Node and
ServiceCIDRs (where served).

One reflector per resource, as client-go's informers do:
- list (paginated) -> the store gets the complete set, and the list's resourceVersion;
- watch from that resourceVersion with bookmarks; a watch that ends (server timeout, dropped
  connection) resumes from the last resourceVersion seen, without relisting;
- 410 Gone (as an HTTP status or a watch ERROR event) means the resourceVersion is too old:
  relist; other errors back off exponentially (0.5 s doubling to 30 s).
The label selector is kube-proxy's: services of other proxies and headless services are
never even sent. A bad object is logged with its kind ns/name and field and skipped; the
last good version of it stays programmed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import aiohttp

from ..model.objects import LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME
from ..model.parse import ObjectError, parse_endpoint_slice, parse_node, parse_service, parse_service_cidr
from .apiclient import ApiConfig
from .store import Obj, ObjectStore

if TYPE_CHECKING:
    from ..runtime.metrics import Metrics

log = logging.getLogger("svcproxy.sources.kubernetes")

LABEL_SELECTOR = f"!{LABEL_SERVICE_PROXY_NAME},!{LABEL_HEADLESS}"
TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
TAINT_TO_BE_DELETED = "ToBeDeletedByClusterAutoscaler"
CLUSTER_SCOPED = ("Node", "ServiceCIDR")
# Retries after failures: doubling from BACKOFF_FIRST up to BACKOFF_MAX, +-20% jitter. The cap
# is below client-go's 30 s so that, after an API server outage, every node is back within one
# sync period (30 s by default) even at the cap's worst jitter; measured in bench/reliability.
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0
# A watch that was open at least this long (or brought events) and then dropped is routine (a
# load balancer's idle cut, an API server restart): it resumes at once, as client-go's does.
SHORT_WATCH = 1.0


class Gone(Exception):
    """410: the resourceVersion is no longer available; relist."""


class ApiError(Exception):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Resource:
    kind: str
    path: str  # collection path, e.g. /api/v1/services
    parse: Callable[[Mapping[str, Any]], Obj]
    params: tuple[tuple[str, str], ...] = ()
    optional: bool = False  # a 404 means the cluster does not serve it: run without


def resources(node_name: str) -> list[Resource]:
    return [
        Resource("Service", "/api/v1/services", parse_service, (("labelSelector", LABEL_SELECTOR),)),
        Resource("EndpointSlice", "/apis/discovery.k8s.io/v1/endpointslices", parse_endpoint_slice,
                 (("labelSelector", LABEL_SELECTOR),)),
        Resource("Node", "/api/v1/nodes", parse_node, (("fieldSelector", f"metadata.name={node_name}"),)),
        # ServiceCIDRs (networking.k8s.io/v1, Kubernetes 1.33+): nftables mode drops traffic to
        # unallocated ClusterIPs inside them; older clusters do not serve the resource.
        Resource("ServiceCIDR", "/apis/networking.k8s.io/v1/servicecidrs", parse_service_cidr, optional=True),
    ]


def _meta_key(kind: str, raw: Mapping[str, Any]) -> str:
    meta = raw.get("metadata") or {}
    name = meta.get("name", "")
    return name if kind in CLUSTER_SCOPED else f"{meta.get('namespace') or 'default'}/{name}"


def _trigger_time(raw: Mapping[str, Any]) -> float | None:
    value = ((raw.get("metadata") or {}).get("annotations") or {}).get(TRIGGER_TIME)
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _node_eligible(raw: Mapping[str, Any]) -> bool:
    """kube-proxy's /healthz says nodeEligible=false (503) for a node being deleted or drained by
    the cluster autoscaler, so load balancers stop sending it new connections."""
    if (raw.get("metadata") or {}).get("deletionTimestamp"):
        return False
    taints = (raw.get("spec") or {}).get("taints") or ()
    return not any(isinstance(t, dict) and t.get("key") == TAINT_TO_BE_DELETED for t in taints)


async def request(api: ApiConfig, session: aiohttp.ClientSession, method: str, url: str,
                  metrics: Metrics | None, **kw: Any) -> aiohttp.ClientResponse:
    """One API request, counted as client-go counts it (rest_client_requests_total by code,
    rest_client_request_duration_seconds to the response's headers; "<error>" when none came)."""
    started = time.perf_counter()
    host = urlsplit(api.host).netloc
    try:
        resp = await session.request(method, url, headers=api.headers(), ssl=api.ssl_context,
                                     server_hostname=api.server_hostname, **kw)
    except (aiohttp.ClientError, TimeoutError):
        if metrics is not None:
            metrics.api_request(method, host, "<error>", time.perf_counter() - started)
        raise
    if metrics is not None:
        metrics.api_request(method, host, str(resp.status), time.perf_counter() - started)
    return resp


class EventSink:
    """Creates Events (events.k8s.io/v1) on the API server, for runtime/events.EventRecorder."""

    def __init__(self, api: ApiConfig, metrics: Metrics | None = None) -> None:
        self.api, self.metrics = api, metrics
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, namespace: str, event: Mapping[str, Any]) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        url = f"{self.api.host}/apis/events.k8s.io/v1/namespaces/{namespace}/events"
        resp = await request(self.api, self.session, "POST", url, self.metrics, json=event,
                             timeout=aiohttp.ClientTimeout(total=30, sock_connect=10))
        try:
            if resp.status not in (200, 201, 202):
                raise ApiError(f"POST events: HTTP {resp.status}: {(await resp.text())[:300]}", resp.status)
        finally:
            resp.release()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


class Reflector:
    """List-then-watch one resource into the store, forever."""

    def __init__(self, api: ApiConfig, session: aiohttp.ClientSession, res: Resource, store: ObjectStore,
                 page_size: int = 500, metrics: Metrics | None = None) -> None:
        self.api, self.session, self.res, self.store = api, session, res, store
        self.metrics = metrics
        self.name = f"api/{res.kind}"
        self.page_size = page_size
        self.resource_version = ""
        self.lists = 0  # how many times it listed (tests check that 410 relists, drops do not)
        self.watches = 0
        self.watch_opened = 0.0  # monotonic time the current watch's stream opened; 0: not open
        self.watch_events = 0
        self.forbidden = False  # an optional kind this account may not read: said once

    async def run(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            self.watch_opened, self.watch_events = 0.0, 0
            try:
                if not self.resource_version:
                    await self.list()
                    self.store.mark_synced(self.name)
                    backoff = BACKOFF_FIRST
                await self.watch()
                backoff = BACKOFF_FIRST
            except ApiError as e:
                if e.status == 404 and self.res.optional and not self.resource_version:
                    log.info("%s: not served by this API server; running without", self.res.kind)
                    self.store.mark_synced(self.name)
                    return
                if e.status == 403 and self.res.optional and not self.resource_version and not self.forbidden:
                    # e.g. an older system:node-proxier role: an optional kind must not hold
                    # every rule back; retried in the background until the role allows it
                    self.forbidden = True
                    log.warning("%s: forbidden (403) to this service account; programming without it "
                                "(grant list/watch on %s to use it)", self.res.kind, self.res.path)
                    self.store.mark_synced(self.name)
                await self._backoff(e, backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Gone:
                log.info("%s: resourceVersion %s is gone (410); relisting", self.res.kind, self.resource_version)
                self.resource_version = ""
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                if self._was_established():
                    log.info("%s: watch dropped (%s: %s); resuming from resourceVersion %s",
                             self.res.kind, type(e).__name__, e, self.resource_version)
                    backoff = BACKOFF_FIRST
                    continue
                await self._backoff(e, backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _was_established(self) -> bool:
        """Whether the watch that just failed had been working (client-go's rule: open for a
        second, or brought events); a server that accepts and drops at once still backs off."""
        return bool(self.watch_opened) and (self.watch_events > 0 or time.monotonic() - self.watch_opened >= SHORT_WATCH)

    async def _backoff(self, e: Exception, seconds: float) -> None:
        log.warning("%s: %s: %s; retrying in %.1fs", self.res.kind, type(e).__name__, e, seconds)
        await asyncio.sleep(seconds * random.uniform(0.8, 1.2))

    def _url(self, **params: str) -> str:
        return f"{self.api.host}{self.res.path}?{urlencode([*self.res.params, *params.items()])}"

    async def _get(self, url: str, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        resp = await request(self.api, self.session, "GET", url, self.metrics, timeout=timeout)
        if resp.status == 410:
            resp.release()
            raise Gone()
        if resp.status != 200:
            text = (await resp.text())[:300]
            resp.release()
            raise ApiError(f"GET {self.res.path}: HTTP {resp.status}: {text}", resp.status)
        return resp

    async def list(self) -> None:
        """Every object, page by page; then the store holds exactly these for this resource."""
        self.lists += 1
        started = time.perf_counter()
        objects: list[Obj] = []
        keep: set[tuple[str, str]] = set()
        token = ""
        rv = ""
        timeout = aiohttp.ClientTimeout(total=120, sock_connect=10)
        while True:
            params = {"limit": str(self.page_size)}
            if token:
                params["continue"] = token
            resp = await self._get(self._url(**params), timeout)
            body = json.loads(await resp.read())
            for raw in body.get("items") or ():
                obj = self._parse(raw, keep)
                if obj is not None:
                    objects.append(obj)
            meta = body.get("metadata") or {}
            rv = meta.get("resourceVersion", rv)
            token = meta.get("continue") or ""
            if not token:
                break
        self.store.replace(self.name, objects, keep)
        self.resource_version = rv
        log.info("%s: listed %d object(s) at resourceVersion %s in %.2fs", self.res.kind, len(objects), rv,
                 time.perf_counter() - started)

    def _parse(self, raw: Mapping[str, Any], keep: set[tuple[str, str]]) -> Obj | None:
        if self.res.kind == "Node":
            self.store.node_eligible[_meta_key("Node", raw)] = _node_eligible(raw)
        if "kind" not in raw:
            raw = {**raw, "kind": self.res.kind}  # list items carry no kind
        key = _meta_key(self.res.kind, raw)
        ref = f"{self.res.kind} {key}"
        try:
            obj = self.res.parse(raw)
        except ObjectError as e:
            kept = (self.res.kind, key) in self.store.owned(self.name)
            if kept:
                keep.add((self.res.kind, key))
            message = f"{e}{'; keeping its last good version' if kept else '; skipped'}"
            log.error("%s", message)
            self.store.report_one(self.name, ref, message)
            return None
        self.store.report_one(self.name, ref, None)
        return obj

    async def watch(self) -> None:
        """Follow changes from resource_version until the server ends the watch."""
        self.watches += 1
        seconds = random.randint(300, 600)
        params = {"watch": "true", "allowWatchBookmarks": "true", "resourceVersion": self.resource_version,
                  "timeoutSeconds": str(seconds)}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=seconds + 30)
        resp = await self._get(self._url(**params), timeout)
        self.watch_opened = time.monotonic()
        try:
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                if b"\n" not in chunk:
                    continue
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.watch_events += 1
                        self._event(json.loads(line))
            if buf.strip():
                self._event(json.loads(buf))
        finally:
            resp.release()

    def _event(self, event: Mapping[str, Any]) -> None:
        kind, raw = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if raw.get("code") == 410:
                raise Gone()
            raise ApiError(f"watch error: {raw.get('message', raw)}")
        rv = (raw.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            obj = self._parse(raw, set())
            if obj is not None:
                self.store.put(self.name, obj, _trigger_time(raw) if self.res.kind == "EndpointSlice" else None)
        elif kind == "DELETED":
            if self.res.kind == "Node":
                self.store.node_eligible.pop(_meta_key("Node", raw), None)
            self.store.delete(self.name, self.res.kind, _meta_key(self.res.kind, raw))
        elif kind != "BOOKMARK":
            log.warning("%s: unknown watch event type %r ignored", self.res.kind, kind)
        if rv:
            self.resource_version = rv


class ApiSource:
    """Services, EndpointSlices and this node's Node from an API server."""

    name = "api"

    def __init__(self, api: ApiConfig, node_name: str, page_size: int = 500) -> None:
        self.api, self.node_name, self.page_size = api, node_name, page_size
        self.reflectors: list[Reflector] = []
        self.metrics: Metrics | None = None  # the daemon's, for the rest_client_* families

    async def run(self, store: ObjectStore) -> None:
        store.nodes_watched = True  # a Node never listed means it does not exist (for /healthz)
        for res in resources(self.node_name):
            store.add_source(f"api/{res.kind}")
        store.mark_synced(self.name)  # the reflectors stand for this source from here on
        connector = aiohttp.TCPConnector(limit=10)
        async with aiohttp.ClientSession(connector=connector) as session:
            self.reflectors = [Reflector(self.api, session, res, store, self.page_size, self.metrics)
                               for res in resources(self.node_name)]
            await asyncio.gather(*(r.run() for r in self.reflectors))


__all__ = ["ApiSource", "EventSink", "Reflector"]
