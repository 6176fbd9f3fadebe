"""A stand-in Kubernetes API server speaking the real list/watch HTTP protocol, on aiohttp.

What the daemon's reflectors rely on, and what the tests need to break on purpose:
- list with limit/continue pagination and the collection's resourceVersion;
- label selectors (`!key`, `key`, `key=value`) and fieldSelector metadata.name=...;
- watch (chunked JSON lines) from a resourceVersion: history replay, ADDED/MODIFIED/DELETED,
  BOOKMARK events when allowWatchBookmarks is set, timeoutSeconds;
- 410 Gone for a compacted resourceVersion (as a watch ERROR event, or as an HTTP status);
- dropped connections (drop_watches cuts every open watch stream mid-flight);
- failures (fail_next_requests answers the next N requests with 500);
- Events: POST .../namespaces/NS/events creates one (events.k8s.io/v1, as kube-proxy's
  recorder writes them), listed like any other kind.

It runs in a thread with its own event loop, so a daemon in the test's loop or in another
process can use it; the mutators are thread-safe.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PATHS = {
    "Service": "/api/v1/services",
    "EndpointSlice": "/apis/discovery.k8s.io/v1/endpointslices",
    "Node": "/api/v1/nodes",
    "ServiceCIDR": "/apis/networking.k8s.io/v1/servicecidrs",
    "Event": "/apis/events.k8s.io/v1/events",
}
CLUSTER_SCOPED = ("Node", "ServiceCIDR")
KINDS = {v: k for k, v in PATHS.items()}


def _key(obj: Mapping[str, Any]) -> str:
    m = obj["metadata"]
    return f"{m.get('namespace', '')}/{m['name']}"


def _labels_match(selector: str, labels: Mapping[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if term.startswith("!"):
            if term[1:] in labels:
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if term.count("!=") and labels.get(k.rstrip("!")) == v:
                return False
            if "!=" not in term and labels.get(k) != v:
                return False
        elif term not in labels:
            return False
    return True


def _fields_match(selector: str, obj: Mapping[str, Any]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        k, _, v = term.partition("=")
        if k == "metadata.name" and obj["metadata"]["name"] != v:
            return False
        if k == "metadata.namespace" and obj["metadata"].get("namespace", "") != v:
            return False
    return True


@dataclass(eq=False)
class _Watcher:
    kind: str
    labels: str
    fields: str
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class StandInApiServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, gone_as_status: bool = False,
                 bookmark_interval: float = 1.0, kinds: tuple[str, ...] = tuple(PATHS)) -> None:
        self.host, self.port = host, port
        self.gone_as_status = gone_as_status
        self.kinds = kinds  # the resources it serves (others answer 404, as on older clusters)
        self.bookmark_interval = bookmark_interval
        self.objects: dict[str, dict[str, dict]] = {k: {} for k in PATHS}
        self.rv = 1
        self.history: list[tuple[int, str, str, dict]] = []  # (rv, kind, type, object)
        self.compacted = 0  # watches from a resourceVersion below this get 410
        self.watchers: set[_Watcher] = set()
        self._responses: set[web.StreamResponse] = set()
        self.requests: list[str] = []  # "list Service", "watch Service rv=12", ...
        self.fail_next = 0
        self.list_delay = 0.0  # seconds every list request waits (a slow or overloaded API server)
        self.forbidden: set[str] = set()  # kinds this client's role may not read: 403 (RBAC)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None  # None while unreachable
        self._started = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> StandInApiServer:
        self._thread = threading.Thread(target=self._serve, name="stand-in apiserver", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("stand-in API server did not start")
        return self

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        for kind, path in PATHS.items():
            if kind not in self.kinds:
                continue
            app.router.add_get(path, self._collection)
            item = _item_path(kind)
            app.router.add_put(item, self._put)
            app.router.add_delete(item, functools.partial(self._delete_http, kind))
        app.router.add_post("/apis/events.k8s.io/v1/namespaces/{ns}/events", self._create_event)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._loop.run_until_complete(self._runner.setup())
        site = self._site = web.TCPSite(self._runner, self.host, self.port)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stop(self) -> None:
        if self._loop is None:
            return
        self.call(self._drop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)

    def __enter__(self) -> StandInApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, fn, *args):
        """Run fn(*args) in the server's loop and return its result (thread-safe)."""
        if self._loop is None or threading.current_thread() is self._thread:
            return fn(*args)
        fut = asyncio.run_coroutine_threadsafe(_async(fn, *args), self._loop)
        return fut.result(30)

    # -- what tests do -----------------------------------------------------
    def apply(self, *objs: dict) -> None:
        """Create or update objects (ADDED / MODIFIED events)."""
        self.call(self._apply, [copy.deepcopy(o) for o in objs])

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.call(self._delete, kind, f"{namespace}/{name}")

    def compact(self) -> None:
        """Forget history: every resourceVersion up to now is gone (watches from it get 410)."""
        self.call(self._compact)

    def drop_watches(self) -> int:
        """Cut every open watch connection mid-stream, as a load balancer or restart would."""
        return self.call(self._drop)

    def unreachable(self) -> None:
        """Stop listening and cut every open connection: clients get "connection refused", as
        when the API server (or the path to it) is down. The objects stay; reachable() is the
        server coming back with them."""
        asyncio.run_coroutine_threadsafe(self._go_down(), self._loop).result(30)  # type: ignore[arg-type]

    def reachable(self) -> None:
        asyncio.run_coroutine_threadsafe(self._go_up(), self._loop).result(30)  # type: ignore[arg-type]

    def fail_requests(self, n: int) -> None:
        self.call(setattr, self, "fail_next", n)

    def count(self, prefix: str) -> int:
        return self.call(lambda: sum(r.startswith(prefix) for r in self.requests))

    # -- in the server's loop ----------------------------------------------
    def _apply(self, objs: list[dict]) -> None:
        for obj in objs:
            kind = obj["kind"]
            key = _key(obj)
            self.rv += 1
            obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
            typ = "MODIFIED" if key in self.objects[kind] else "ADDED"
            self.objects[kind][key] = obj
            self._emit(kind, typ, obj)

    def _delete(self, kind: str, key: str) -> None:
        obj = self.objects[kind].pop(key, None)
        if obj is None:
            return
        self.rv += 1
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
        self._emit(kind, "DELETED", obj)

    def _emit(self, kind: str, typ: str, obj: dict) -> None:
        self.history.append((self.rv, kind, typ, obj))
        for w in list(self.watchers):
            if w.kind == kind and self._match(w, obj):
                w.queue.put_nowait((typ, obj))

    def _compact(self) -> None:
        self.compacted = self.rv + 1
        self.history.clear()

    async def _go_down(self) -> None:
        if self._site is not None:
            site, self._site = self._site, None
            self._drop()
            await site.stop()

    async def _go_up(self) -> None:
        if self._site is None and self._runner is not None:
            self._site = web.TCPSite(self._runner, self.host, self.port)
            await self._site.start()

    def _drop(self) -> int:
        n = 0
        for resp in list(self._responses):
            transport = resp._req.transport if resp._req else None  # type: ignore[attr-defined]
            if transport is not None:
                transport.abort()
                n += 1
        self._responses.clear()
        return n

    @staticmethod
    def _match(w: _Watcher, obj: dict) -> bool:
        return _labels_match(w.labels, obj["metadata"].get("labels") or {}) and _fields_match(w.fields, obj)

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        kind = KINDS[request.path]
        q = request.query
        if self.fail_next:
            self.fail_next -= 1
            return web.json_response({"kind": "Status", "code": 500, "message": "injected failure"}, status=500)
        if kind in self.forbidden:
            return web.json_response({"kind": "Status", "code": 403, "reason": "Forbidden",
                                      "message": f"cannot list resource {kind}"}, status=403)
        labels, fields = q.get("labelSelector", ""), q.get("fieldSelector", "")
        if q.get("watch") in ("true", "1"):
            return await self._watch(request, kind, labels, fields)
        if self.list_delay:
            await asyncio.sleep(self.list_delay)
        return self._list(kind, labels, fields, int(q.get("limit", "0") or 0), q.get("continue", ""))

    async def _create_event(self, request: web.Request) -> web.Response:
        """POST an Event: 201 with the object, 409 if the name exists, 400 without the fields
        the events.k8s.io/v1 API requires of a new Event."""
        self.requests.append("create Event")
        obj = await request.json()
        meta = obj.get("metadata") or {}
        missing = [f for f in ("eventTime", "reportingController", "reportingInstance", "action", "reason")
                   if not obj.get(f)]
        if missing or meta.get("namespace") != request.match_info["ns"] or not meta.get("name"):
            return web.json_response({"kind": "Status", "code": 400, "message": f"invalid Event: {missing}"},
                                     status=400)
        if f"{meta['namespace']}/{meta['name']}" in self.objects["Event"]:
            return web.json_response({"kind": "Status", "code": 409, "reason": "AlreadyExists"}, status=409)
        self._apply([{**obj, "kind": "Event"}])
        return web.json_response(obj, status=201)

    def events(self) -> list[dict]:
        """The Events created so far, oldest first."""
        return self.call(lambda: sorted(self.objects["Event"].values(), key=lambda e: e["eventTime"]))

    async def _put(self, request: web.Request) -> web.Response:
        """PUT .../namespaces/NS/KIND/NAME: create or replace (for clients in other processes)."""
        obj = await request.json()
        self._apply([obj])
        return web.json_response(obj)

    async def _delete_http(self, kind: str, request: web.Request) -> web.Response:
        ns = request.match_info.get("ns", "")
        self._delete(kind, f"{ns}/{request.match_info['name']}")
        return web.json_response({"kind": "Status", "status": "Success"})

    def _list(self, kind: str, labels: str, fields: str, limit: int, token: str) -> web.Response:
        self.requests.append(f"list {kind}")
        if token:
            rv_s, _, start_s = token.partition(":")
            rv, start = int(rv_s), int(start_s)
            if rv < self.compacted:
                return web.json_response({"kind": "Status", "code": 410, "reason": "Expired",
                                          "message": "continue token expired"}, status=410)
        else:
            rv, start = self.rv, 0
        keys = sorted(self.objects[kind])
        items, nxt = [], ""
        w = _Watcher(kind, labels, fields)
        i = start
        while i < len(keys):
            obj = self.objects[kind][keys[i]]
            i += 1
            if self._match(w, obj):
                items.append({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
                if limit and len(items) >= limit:
                    break
        if i < len(keys) and limit:
            nxt = f"{rv}:{i}"
        body = {"kind": f"{kind}List", "apiVersion": "v1",
                "metadata": {"resourceVersion": str(rv), **({"continue": nxt} if nxt else {})}, "items": items}
        return web.Response(body=json.dumps(body).encode(), content_type="application/json")

    async def _watch(self, request: web.Request, kind: str, labels: str, fields: str) -> web.StreamResponse:
        q = request.query
        since = int(q.get("resourceVersion") or 0)
        self.requests.append(f"watch {kind} rv={since}")
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(q.get("timeoutSeconds") or 1800)
        gone = since and since < self.compacted
        if gone and self.gone_as_status:
            return web.json_response({"kind": "Status", "code": 410, "reason": "Expired",
                                      "message": f"too old resource version: {since}"}, status=410)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
        except ConnectionResetError:  # the client went away before the watch started
            return resp
        if gone:
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                      "message": f"too old resource version: {since} ({self.compacted})"}
            await resp.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
            return resp
        w = _Watcher(kind, labels, fields)
        for rv, k, typ, obj in self.history:  # replay what happened after `since`
            if rv > since and k == kind and self._match(w, obj):
                w.queue.put_nowait((typ, obj))
        self.watchers.add(w)
        self._responses.add(resp)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while (left := deadline - loop.time()) > 0:
                try:
                    async with asyncio.timeout(min(left, self.bookmark_interval)):  # never loses an item
                        typ, obj = await w.queue.get()
                except TimeoutError:
                    if bookmarks:
                        mark = {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": str(self.rv)}}
                        await resp.write(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n")
                    continue
                await resp.write(json.dumps({"type": typ, "object": obj}).encode() + b"\n")
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            self.watchers.discard(w)
            self._responses.discard(resp)
        return resp


async def _async(fn, *args):
    return fn(*args)


def _item_path(kind: str) -> str:
    base, plural = PATHS[kind].rsplit("/", 1)
    if kind in CLUSTER_SCOPED:
        return f"{base}/{plural}/{{name}}"
    return f"{base}/namespaces/{{ns}}/{plural}/{{name}}"


def item_url(base: str, obj: Mapping[str, Any]) -> str:
    """Where to PUT an object on the stand-in server."""
    meta = obj["metadata"]
    return base + _item_path(obj["kind"]).format(ns=meta.get("namespace", "default"), name=meta["name"])


def main() -> None:
    """`python apiserver.py --port N [--services N --endpoints M]`: serve (optionally generated) objects."""
    import argparse
    import sys
    import time
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from manifests_util import endpoint, endpoint_slice, service

    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--services", type=int, default=0)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--commands", action="store_true",
                    help='read JSON lines from stdin: {"apply": [objects]}, {"delete": [kind, ns, name]}, '
                         '{"compact": true}, {"drop_watches": true}, {"reachable": false|true}, '
                         '{"list_delay": seconds}, {"fail": n}')
    args = ap.parse_args()
    server = StandInApiServer(args.host, args.port, bookmark_interval=30)
    objs = []
    for i in range(args.services):
        name = f"svc-{i}"
        objs.append(service(name, f"172.{30 + i // 65536}.{i // 256 % 256}.{i % 256}", target=8080))
        ns = [i * args.endpoints + j for j in range(args.endpoints)]
        eps = [endpoint(f"10.{1 + (n >> 16)}.{n >> 8 & 255}.{n & 255}", f"node-{n % 3}") for n in ns]
        objs.append(endpoint_slice(f"{name}-abc", name, eps))
    server._apply(objs)
    server.start()
    print(f"serving {len(objs)} objects on {server.url}", flush=True)
    if args.commands:
        for line in sys.stdin:
            if not line.strip():
                continue
            cmd = json.loads(line)
            if "apply" in cmd:
                server.apply(*cmd["apply"])
            elif "delete" in cmd:
                server.delete(*cmd["delete"])
            elif "compact" in cmd:
                server.compact()
            elif "drop_watches" in cmd:
                server.drop_watches()
            elif "reachable" in cmd:
                (server.reachable if cmd["reachable"] else server.unreachable)()
            elif "list_delay" in cmd:
                server.call(setattr, server, "list_delay", float(cmd["list_delay"]))
            elif "fail" in cmd:
                server.fail_requests(int(cmd["fail"]))
            print("ok", flush=True)
        server.stop()
        return
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
