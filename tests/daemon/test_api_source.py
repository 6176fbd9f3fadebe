"""The daemon against the stand-in API server: list/watch, bookmarks, 410 Gone, dropped connections."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from svcproxy.config import NodeConfig
from svcproxy.runtime.daemon import Daemon, DaemonOptions
from svcproxy.sources.apiclient import ApiConfig
from svcproxy.sources.kubernetes import ApiSource

from .apiserver import StandInApiServer
from .fakes import RecordingDataplane, running
from .manifests_util import endpoint, endpoint_slice, service
from .test_sync_loop import until

pytestmark = pytest.mark.timeout(60)
CFG = NodeConfig(hostname="node-a", node_ips=("192.168.0.2",))


@pytest.fixture
def server() -> Iterator[StandInApiServer]:
    with StandInApiServer(bookmark_interval=0.2) as s:
        s.apply(service("web", "172.30.0.10"),
                endpoint_slice("web-1", "web", [endpoint("10.0.1.10", "node-a"), endpoint("10.0.2.10")]),
                {"apiVersion": "v1", "kind": "Node",
                 "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "zone-a"}}})
        yield s


def run_with_daemon(server: StandInApiServer, body) -> None:
    async def main() -> None:
        dp = RecordingDataplane()
        source = ApiSource(ApiConfig(host=server.url), "node-a")
        opts = DaemonOptions(cfg=CFG, mode="fake", sources=[source], min_sync_period=0.0,
                             healthz_bind_address="", metrics_bind_address="", clear_conntrack=False)
        daemon = Daemon(opts, dp=dp)
        async with running(daemon):
            await until(lambda: dp.calls)
            await body(dp, source, daemon)

    asyncio.run(main())


def reflector(source: ApiSource, kind: str):
    return next(r for r in source.reflectors if r.res.kind == kind)


def test_list_then_watch_follows_changes(server: StandInApiServer) -> None:
    async def body(dp, source, daemon) -> None:
        assert dp.endpoints("default/web") == ["10.0.1.10:8080", "10.0.2.10:8080"]
        assert dp.last.zone == "zone-a", "this node's Node is read"
        server.apply(endpoint_slice("web-1", "web", [endpoint("10.0.1.10", "node-a")]))
        await until(lambda: dp.endpoints("default/web") == ["10.0.1.10:8080"], 3)
        assert dp.calls[-1][1] == ["default/web"], "a partial sync of just that service"
        server.apply(service("dns", "172.30.0.53", 53, "UDP"),
                     endpoint_slice("dns-1", "dns", [endpoint("10.0.1.53")], 53, "UDP"))
        await until(lambda: dp.endpoints("default/dns") == ["10.0.1.53:53"], 3)
        server.delete("Service", "default", "dns")
        await until(lambda: "default/dns" not in dp.last.services, 3)
        # what kube-proxy never sees: other proxies' and headless services (label selector)
        other = service("other", "172.30.0.77")
        other["metadata"]["labels"] = {"service.kubernetes.io/service-proxy-name": "someone-else"}
        server.apply(other, service("after", "172.30.0.78"))
        await until(lambda: "default/after" in dp.last.services, 3)
        assert "default/other" not in daemon.store.services

    run_with_daemon(server, body)


def test_bookmarks_and_dropped_connections_resume_without_relist(server: StandInApiServer) -> None:
    async def body(dp, source, daemon) -> None:
        svc = reflector(source, "Service")
        server.apply(endpoint_slice("web-1", "web", [endpoint("10.0.1.11", "node-a")]))  # moves the RV on
        await until(lambda: svc.resource_version == str(server.rv), 3)  # via a BOOKMARK event
        lists = server.count("list")
        for _ in range(3):
            assert server.drop_watches() >= 1
            server.apply(endpoint_slice("web-1", "web", [endpoint(f"10.0.1.{20 + _}", "node-a")]))
            await until(lambda n=_: dp.endpoints("default/web") == [f"10.0.1.{20 + n}:8080"], 5)
        assert server.count("list") == lists, "a dropped watch resumes from its resourceVersion"
        assert server.count("watch Service rv=0") == 0

    run_with_daemon(server, body)


def test_dropped_watches_resume_at_once_every_time(server: StandInApiServer) -> None:
    """Found by bench/reliability: the retry delay doubled on every dropped watch and was never
    reset by a watch that had worked, so after a few drops (or one outage) every later drop
    cost up to 30 s before changes flowed again. A watch that was open resumes at once."""
    async def body(dp, source, daemon) -> None:
        await asyncio.sleep(1.1)  # the watches have been open a while (client-go's "short watch" is 1 s)
        for i in range(5):
            assert server.drop_watches() >= 1
            server.apply(endpoint_slice("web-1", "web", [endpoint(f"10.0.1.{30 + i}", "node-a")]))
            t = asyncio.get_running_loop().time()
            await until(lambda n=i: dp.endpoints("default/web") == [f"10.0.1.{30 + n}:8080"], 5)
            assert asyncio.get_running_loop().time() - t < 0.4, f"drop {i + 1}: the change waited for a backoff"
            await asyncio.sleep(1.1)

    run_with_daemon(server, body)


def test_a_server_that_drops_every_watch_at_once_is_backed_off() -> None:
    """The other side of resuming at once: a watch cut as soon as it opens is a failure, so a
    broken server is not hammered in a tight loop. (No bookmarks in the 2 s: a watch that got
    one counts as having worked, which a loaded machine's slower drop loop would allow.)"""
    with StandInApiServer(bookmark_interval=3) as server:
        server.apply(service("web", "172.30.0.10"))

        async def body(dp, source, daemon) -> None:
            watches = server.count("watch Service")
            t0 = asyncio.get_running_loop().time()
            while asyncio.get_running_loop().time() - t0 < 2.0:
                server.drop_watches()
                await asyncio.sleep(0.01)
            assert server.count("watch Service") - watches <= 5, "backed off (0.5 s, 1 s, ...)"

        run_with_daemon(server, body)


@pytest.mark.parametrize("as_status", [False, True], ids=["error-event", "http-status"])
def test_410_gone_relists_and_converges(server: StandInApiServer, as_status: bool) -> None:
    server.gone_as_status = as_status

    async def body(dp, source, daemon) -> None:
        lists = server.count("list EndpointSlice")
        server.apply(service("late", "172.30.0.12"),
                     endpoint_slice("late-1", "late", [endpoint("10.0.1.12", "node-a")]))
        server.delete("EndpointSlice", "default", "web-1")
        server.compact()  # all history is gone: the reconnecting watches get 410
        server.drop_watches()
        await until(lambda: dp.endpoints("default/late") == ["10.0.1.12:8080"], 5)
        await until(lambda: dp.endpoints("default/web") == [], 5)
        assert server.count("list EndpointSlice") >= lists

    run_with_daemon(server, body)


def test_server_errors_back_off_and_converge(server: StandInApiServer) -> None:
    async def body(dp, source, daemon) -> None:
        server.fail_requests(4)
        server.drop_watches()
        server.apply(endpoint_slice("web-1", "web", [endpoint("10.0.1.99", "node-a")]))
        await until(lambda: dp.endpoints("default/web") == ["10.0.1.99:8080"], 10)

    run_with_daemon(server, body)


def test_bad_object_keeps_last_good_version(server: StandInApiServer) -> None:
    async def body(dp, source, daemon) -> None:
        bad = endpoint_slice("web-1", "web", [endpoint("10.0.1.300", "node-a")])
        server.apply(bad, service("next", "172.30.0.13"))
        await until(lambda: "default/next" in dp.last.services, 3)
        assert dp.endpoints("default/web") == ["10.0.1.10:8080", "10.0.2.10:8080"]
        server.compact()
        server.drop_watches()  # relist with the bad object still there: last good version stays
        await until(lambda: server.count("list EndpointSlice") >= 2, 5)
        await asyncio.sleep(0.2)
        assert dp.endpoints("default/web") == ["10.0.1.10:8080", "10.0.2.10:8080"]

    run_with_daemon(server, body)


def test_list_is_paginated(server: StandInApiServer) -> None:
    server.apply(*[service(f"s{i}", f"172.30.1.{i}") for i in range(25)])

    async def body(dp, source, daemon) -> None:
        assert len(dp.last.services) == 26

    async def main() -> None:
        dp = RecordingDataplane()
        source = ApiSource(ApiConfig(host=server.url), "node-a", page_size=10)
        daemon = Daemon(DaemonOptions(cfg=CFG, mode="fake", sources=[source], healthz_bind_address="",
                                      metrics_bind_address="", clear_conntrack=False), dp=dp)
        async with running(daemon):
            await until(lambda: dp.calls)
            assert len(dp.last.services) == 26
            assert server.call(lambda: server.requests.count("list Service")) == 3

    asyncio.run(main())


def test_node_being_deleted_makes_healthz_503(server: StandInApiServer) -> None:
    import json as _json

    import aiohttp

    from .test_health_metrics import free_port

    hz = free_port()

    async def main() -> None:
        dp = RecordingDataplane()
        source = ApiSource(ApiConfig(host=server.url), "node-a")
        daemon = Daemon(DaemonOptions(cfg=CFG, mode="fake", sources=[source], min_sync_period=0.0,
                                      healthz_bind_address=f"127.0.0.1:{hz}", metrics_bind_address="",
                                      clear_conntrack=False), dp=dp)
        task = asyncio.create_task(daemon.run())

        async def get(path: str) -> tuple[int, dict]:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{hz}{path}") as r:
                return r.status, _json.loads(await r.text())

        try:
            await until(lambda: dp.calls)
            status, doc = await get("/healthz")
            assert status == 200 and doc["nodeEligible"] is True
            server.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
                          "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]}})
            await until(lambda: daemon.store.node_eligible.get("node-a") is False, 3)
            status, doc = await get("/healthz")
            assert status == 503 and doc["nodeEligible"] is False
            status, _ = await get("/livez")
            assert status == 200, "the proxy itself is alive"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_service_cidrs_are_watched(server: StandInApiServer) -> None:
    async def body(dp, source, daemon) -> None:
        assert dp.last.service_cidrs == ()
        server.apply({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "kubernetes"},
                      "spec": {"cidrs": ["172.30.0.0/16"]}})
        await until(lambda: dp.last.service_cidrs == ("172.30.0.0/16",), 3)
        assert dp.calls[-1][1] is None, "a full sync"

    run_with_daemon(server, body)


def test_older_api_server_without_service_cidrs() -> None:
    with StandInApiServer(kinds=("Service", "EndpointSlice", "Node")) as s:
        s.apply(service("web", "172.30.0.10"), endpoint_slice("web-1", "web", [endpoint("10.0.1.10")]))

        async def body(dp, source, daemon) -> None:
            assert dp.endpoints("default/web") == ["10.0.1.10:8080"]

        run_with_daemon(s, body)


def test_a_role_without_service_cidrs_still_programs_and_picks_them_up_later() -> None:
    """An optional kind answering 403 (an older system:node-proxier) holds nothing back; once
    the role allows it, the retrying reflector brings it in."""
    with StandInApiServer() as s:
        s.forbidden = {"ServiceCIDR"}
        s.apply(service("web", "172.30.0.10"), endpoint_slice("web-1", "web", [endpoint("10.0.1.10")]))

        async def body(dp, source, daemon) -> None:
            assert dp.endpoints("default/web") == ["10.0.1.10:8080"]
            s.apply({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "kubernetes"},
                     "spec": {"cidrs": ["172.30.0.0/16"]}})
            s.forbidden = set()
            await until(lambda: dp.last.service_cidrs == ("172.30.0.0/16",), 10)

        run_with_daemon(s, body)


def test_a_node_never_seen_is_not_eligible() -> None:
    """kube-proxy's NodeEligible: no Node object (not created yet, or deleted) -> /healthz 503."""
    import aiohttp

    from .test_health_metrics import free_port

    hz = free_port()
    with StandInApiServer(bookmark_interval=0.2) as server:
        server.apply(service("web", "172.30.0.10"), endpoint_slice("web-1", "web", [endpoint("10.0.1.10")]))

        async def main() -> None:
            dp = RecordingDataplane()
            source = ApiSource(ApiConfig(host=server.url), "node-a")
            daemon = Daemon(DaemonOptions(cfg=CFG, mode="fake", sources=[source], min_sync_period=0.0,
                                          healthz_bind_address=f"127.0.0.1:{hz}", metrics_bind_address="",
                                          clear_conntrack=False), dp=dp)
            task = asyncio.create_task(daemon.run())

            async def get(path: str) -> tuple[int, dict]:
                async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{hz}{path}") as r:
                    return r.status, await r.json(content_type=None)

            try:
                await until(lambda: dp.calls)
                status, doc = await get("/healthz")
                assert status == 503 and doc["nodeEligible"] is False and doc["healthy"] is True
                assert (await get("/livez"))[0] == 200
                server.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}})
                await until(lambda: "node-a" in daemon.store.node_eligible, 3)
                status, doc = await get("/healthz")
                assert status == 200 and doc["nodeEligible"] is True
                server.delete("Node", "", "node-a")
                await until(lambda: "node-a" not in daemon.store.node_eligible, 3)
                assert (await get("/healthz"))[0] == 503
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        asyncio.run(main())


def test_events_and_client_metrics(server: StandInApiServer) -> None:
    """kube-proxy's Events reach the API (events.k8s.io/v1, reportingController kube-proxy), and
    the API client's requests are counted under client-go's names."""
    import socket

    import aiohttp

    from .test_health_metrics import free_port

    mp = free_port()
    busy = socket.socket()
    busy.bind(("0.0.0.0", 0))
    busy.listen()
    taken = busy.getsockname()[1]

    async def main() -> None:
        dp = RecordingDataplane()
        source = ApiSource(ApiConfig(host=server.url), "node-a")
        daemon = Daemon(DaemonOptions(cfg=CFG, mode="iptables", sources=[source], min_sync_period=0.0,
                                      healthz_bind_address="", metrics_bind_address=f"127.0.0.1:{mp}",
                                      clear_conntrack=False), dp=dp)
        async with running(daemon):
            await until(lambda: dp.calls)
            await until(lambda: any(e["reason"] == "Starting" for e in server.events()), 5)
            start = next(e for e in server.events() if e["reason"] == "Starting")
            assert start["type"] == "Normal" and start["action"] == "StartKubeProxy"
            assert start["regarding"] == {"apiVersion": "v1", "kind": "Node", "name": "node-a"}
            assert start["reportingController"] == "kube-proxy"
            assert start["reportingInstance"] == f"kube-proxy-{socket.gethostname()}"
            assert start["metadata"]["namespace"] == "default" and start["metadata"]["name"].startswith("node-a.")

            # a healthCheckNodePort that cannot be opened: a Warning on the Service
            server.apply(service("lb", "172.30.0.20", type="LoadBalancer", externalTrafficPolicy="Local",
                                 healthCheckNodePort=taken,
                                 ports=[{"name": "p", "port": 80, "targetPort": 8080, "nodePort": 30020,
                                         "protocol": "TCP"}]),
                         endpoint_slice("lb-1", "lb", [endpoint("10.0.1.20", "node-a")]))
            await until(lambda: any(e["reason"] == "FailedToStartServiceHealthcheck" for e in server.events()), 5)
            hc = next(e for e in server.events() if e["reason"] == "FailedToStartServiceHealthcheck")
            assert hc["type"] == "Warning" and hc["action"] == "Listen"
            assert hc["regarding"] == {"apiVersion": "v1", "kind": "Service", "name": "lb", "namespace": "default"}
            assert hc["metadata"]["namespace"] == "default"
            assert f'failed to start healthcheck "default/lb" on port {taken}' in hc["note"]

            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{mp}/metrics") as r:
                text = await r.text()
            host = server.url.split("//")[1]
            assert f'rest_client_requests_total{{code="200",host="{host}",method="GET"}}' in text
            assert f'rest_client_requests_total{{code="201",host="{host}",method="POST"}}' in text
            assert f'rest_client_request_duration_seconds_bucket{{host="{host}",le="0.005",verb="GET"}}' in text
            assert f'rest_client_request_duration_seconds_count{{host="{host}",verb="POST"}}' in text
            busy.close()

    asyncio.run(main())
