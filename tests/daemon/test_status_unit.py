"""The status page's parts without a kernel: counters from conntrack entries, the snapshot, the
HTTP app on loopback (JSON, safety headers, read-only), and bad objects reported by the sources."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path

import aiohttp

from svcproxy.config import NodeConfig
from svcproxy.model import load_text
from svcproxy.runtime.status import EndpointCounters, StatusServer, SyncLog, snapshot
from svcproxy.sources.manifests import ManifestSource
from svcproxy.sources.store import ObjectStore
from svcproxy.state import build_state

from .manifests_util import endpoint, endpoint_slice, service

CFG = NodeConfig(hostname="node-a", node_ips=("192.168.0.2",))
PAGE = Path(__file__).resolve().parents[2] / "svcproxy" / "runtime" / "status_page.html"


def state_with(*objs: dict):
    return build_state(load_text(json.dumps({"kind": "List", "items": list(objs)})), CFG)


def web():
    svc = service("web", "172.30.0.10", 80, type="NodePort")
    svc["spec"]["ports"][0]["nodePort"] = 30080
    return state_with(svc,
                      endpoint_slice("web-1", "web", [endpoint("10.0.1.10", "node-a"), endpoint("10.0.1.11", "node-b"),
                                                      endpoint("10.0.1.12", ready=False, terminating=True)]))


def test_counters_count_each_new_entry_once() -> None:
    table = [(1, "10.0.1.10", 8080, "TCP", 3), (2, "10.0.1.11", 8080, "TCP", 1)]
    c = EndpointCounters(dump=lambda: list(table))
    c.poll()
    table.append((3, "10.0.1.10", 8080, "TCP", 2))
    table[0] = (1, "10.0.1.10", 8080, "TCP", 10)  # entry 1 carried 7 more packets
    c.poll()
    c.poll()  # nothing new: nothing counted twice
    del table[0]  # entry 1 expired; 4 is new
    table.append((4, "10.0.1.10", 8080, "UDP", 1))
    c.poll()
    assert c.connections("10.0.1.10", 8080, "TCP") == 2
    assert c.connections("10.0.1.11", 8080, "TCP") == 1
    assert c.connections("10.0.1.10", 8080, "UDP") == 1
    assert c.packets_to("10.0.1.10", 8080, "TCP") == 10 + 2 and c.packets_to("10.0.1.11", 8080, "TCP") == 1


def test_without_kernel_accounting_packets_are_unknown_not_zero() -> None:
    c = EndpointCounters(dump=lambda: [(1, "10.0.1.10", 8080, "TCP", None)])
    c.poll()
    assert c.connections("10.0.1.10", 8080, "TCP") == 1 and c.packets_to("10.0.1.10", 8080, "TCP") is None


def test_counters_report_a_kernel_that_cannot_be_read() -> None:
    def broken() -> list:
        raise OSError("Operation not permitted")
    c = EndpointCounters(dump=broken)
    c.poll()
    assert "cannot read conntrack" in c.error and c.connections("10.0.1.10", 8080, "TCP") == 0


def test_snapshot_shows_what_kubectl_shows() -> None:
    c = EndpointCounters(dump=lambda: [(7, "10.0.1.11", 8080, "TCP", None)])
    c.poll()
    log = SyncLog()
    log.record(True, 0.012, [], 1)
    snap = snapshot(web(), c, log, {"manifests": {"Service default/x": "Service default/x: spec.type: bad"}},
                    "iptables", "node-a")
    (svc,) = snap["services"]
    assert svc["key"] == "default/web" and svc["type"] == "NodePort"
    (port,) = svc["ports"]
    assert port["cluster_ip"] == "172.30.0.10" and port["node_port"] == 30080
    eps = {e["ip"]: e for e in port["endpoints"]}
    assert eps["10.0.1.10"]["local"] and not eps["10.0.1.11"]["local"]
    assert eps["10.0.1.11"]["connections"] == 1 and eps["10.0.1.10"]["connections"] == 0
    assert eps["10.0.1.12"]["terminating"] and not eps["10.0.1.12"]["ready"]
    assert snap["syncs"][0]["kind"] == "full" and snap["syncs"][0]["ms"] == 12.0
    assert snap["problems"] == ["Service default/x: spec.type: bad"]


def test_sync_log_keeps_the_last_ones() -> None:
    log = SyncLog(size=3)
    for i in range(5):
        log.record(False, 0.001, [f"default/s{i}"], 5)
    assert [e["changed"] for e in log.entries] == [["default/s4"], ["default/s3"], ["default/s2"]]


def test_the_page_puts_values_in_as_text_only() -> None:
    page = PAGE.read_text()
    assert "innerHTML" not in page and "outerHTML" not in page and "insertAdjacentHTML" not in page
    assert not re.search(r"""(src|href)=["']https?://""", page)  # nothing fetched from elsewhere
    assert "document.write" not in page and "eval(" not in page


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_app_over_http_on_loopback() -> None:
    async def main() -> None:
        st = web()
        server = StatusServer(lambda: st, lambda: {}, "nftables", "node-a", ["192.168.0.2"],
                              EndpointCounters(dump=lambda: []))
        runner = aiohttp.web.AppRunner(server.app())
        await runner.setup()
        port = free_port()
        await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with aiohttp.ClientSession() as http:
                base = f"http://127.0.0.1:{port}"
                async with http.get(base + "/") as r:
                    assert r.status == 200 and "text/html" in r.headers["Content-Type"]
                    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
                    assert "svcproxy status" in await r.text()
                async with http.get(base + "/api/status") as r:
                    body = await r.json()
                    assert body["node"] == "node-a" and body["services"][0]["key"] == "default/web"
                async with http.post(base + "/api/status") as r:
                    assert r.status == 405  # read-only: nothing to post to but the trace form
                async with http.post(base + "/api/trace", data="not json") as r:
                    assert "error" in await r.json()
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_manifest_source_reports_bad_objects_to_the_store(tmp_path: Path) -> None:
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"kind": "List", "items": [service("ok", "172.30.0.1"), service("bad", "1.2.3.300")]}))
    store = ObjectStore()
    src = ManifestSource([f])
    src.load(store)
    (problems,) = store.problems.values()
    assert len(problems) == 1 and "Service default/bad: spec.clusterIP" in next(iter(problems))
    f.write_text(json.dumps({"kind": "List", "items": [service("ok", "172.30.0.1")]}))
    src.load(store)
    assert store.problems["manifests"] == {}  # fixed: no longer listed
