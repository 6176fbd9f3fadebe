"""/healthz, /livez, /metrics and per-service health-check node ports, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path

import aiohttp
import pytest

from svcproxy.config import NodeConfig
from svcproxy.runtime.daemon import Daemon, DaemonOptions
from svcproxy.sources.manifests import ManifestSource

from .fakes import RecordingDataplane, running
from .manifests_util import endpoint, endpoint_slice, service
from .test_sync_loop import until, write

pytestmark = pytest.mark.timeout(60)
CFG = NodeConfig(hostname="node-a", node_ips=("192.168.0.2",))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lb_local(hc_port: int) -> dict:
    return service("lb", "172.30.0.20", type="LoadBalancer", externalTrafficPolicy="Local",
                   healthCheckNodePort=hc_port, ports=[{"name": "p", "port": 80, "targetPort": 8080,
                                                        "nodePort": 30020, "protocol": "TCP"}])


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def get_full(url: str) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, dict(r.headers), await r.text()


RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


def check_health_doc(doc: dict, healthz: bool) -> None:
    """kube-proxy 1.36's /healthz (and /livez, without nodeEligible) JSON, key order included."""
    keys = ["lastUpdated", "currentTime", *(["nodeEligible"] if healthz else []), "healthy", "status"]
    assert list(doc) == keys
    assert RFC3339_NANO.match(doc["lastUpdated"]) and RFC3339_NANO.match(doc["currentTime"])
    assert isinstance(doc["healthy"], bool)
    assert set(doc["status"]) == {"IPv4"}
    assert list(doc["status"]["IPv4"]) == ["lastUpdated", "healthy"]
    assert RFC3339_NANO.match(doc["status"]["IPv4"]["lastUpdated"])


def test_health_metrics_and_health_check_node_port(tmp_path: Path) -> None:
    hz, mp, hc = free_port(), free_port(), free_port()
    m = tmp_path / "lb.json"
    write(m, lb_local(hc), endpoint_slice("lb-1", "lb", [endpoint("10.0.1.5", "node-a"),
                                                          endpoint("10.0.1.6", "node-a", ready=False),
                                                          endpoint("10.0.2.5", "node-b")]))

    async def main() -> None:
        dp = RecordingDataplane()
        opts = DaemonOptions(cfg=CFG, mode="iptables", sources=[ManifestSource([m])], min_sync_period=0.0,
                             sync_period=0.5, healthz_bind_address=f"127.0.0.1:{hz}",
                             metrics_bind_address=f"127.0.0.1:{mp}", clear_conntrack=False)
        daemon = Daemon(opts, dp=dp)
        async with running(daemon):
            await until(lambda: dp.calls)
            status, headers, body = await get_full(f"http://127.0.0.1:{hz}/healthz")
            assert status == 200
            assert headers["Content-Type"] == "application/json" and headers["X-Content-Type-Options"] == "nosniff"
            assert "," in body and ", " not in body  # Go's compact encoding
            doc = json.loads(body)
            check_health_doc(doc, healthz=True)
            # manifests hold no Node: nothing says this node is going away
            assert doc["nodeEligible"] is True and doc["healthy"] is True
            assert doc["status"]["IPv4"]["healthy"] is True
            status, body = await get(f"http://127.0.0.1:{hz}/livez")
            assert status == 200
            check_health_doc(json.loads(body), healthz=False)
            # the metrics port answers the generic /healthz, as kube-proxy's does; no /livez there
            status, headers, body = await get_full(f"http://127.0.0.1:{mp}/healthz")
            assert (status, body) == (200, "ok") and headers["Content-Type"].startswith("text/plain")
            assert (await get(f"http://127.0.0.1:{mp}/livez"))[0] == 404
            assert await get(f"http://127.0.0.1:{mp}/proxyMode") == (200, "iptables")

            # the health-check node port: one ready local endpoint (the not-ready one does not count)
            async def hc_status() -> tuple[int, dict]:
                try:
                    s, b = await get(f"http://127.0.0.1:{hc}/")
                except aiohttp.ClientError:
                    return 0, {}
                return s, json.loads(b)

            for _ in range(200):
                status, doc = await hc_status()
                if status:
                    break
                await asyncio.sleep(0.02)
            assert status == 200
            assert doc == {"service": {"namespace": "default", "name": "lb"}, "localEndpoints": 1,
                           "serviceProxyHealthy": True}
            # no local endpoint left: 503
            write(m, lb_local(hc), endpoint_slice("lb-1", "lb", [endpoint("10.0.2.5", "node-b")]))
            for _ in range(200):
                status, doc = await hc_status()
                if status == 503:
                    break
                await asyncio.sleep(0.02)
            assert status == 503 and doc["localEndpoints"] == 0

            status, text = await get(f"http://127.0.0.1:{mp}/metrics")
            assert status == 200
            for name in ("kubeproxy_sync_proxy_rules_duration_seconds_bucket",
                         "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
                         "kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
                         "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                         "kubeproxy_network_programming_duration_seconds_bucket",
                         "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
                         "kubeproxy_sync_proxy_rules_endpoint_changes_pending 0.0",
                         "kubeproxy_sync_proxy_rules_service_changes_pending 0.0",
                         "kubeproxy_sync_proxy_rules_endpoint_changes_total 2.0",
                         "kubeproxy_sync_proxy_rules_service_changes_total 1.0",
                         'kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="nat"}',
                         'kubeproxy_sync_proxy_rules_iptables_last{ip_family="IPv4",table="nat"}',
                         'kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"}',
                         'kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family="IPv4"}',
                         'kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="external"} 1.0',
                         'kubeproxy_proxy_healthz_total{code="200"} 1.0',
                         'kubeproxy_proxy_livez_total{code="200"} 1.0',
                         "process_resident_memory_bytes", "python_info"):
                assert name in text, name
            # manifests carry no last-change-trigger-time: no network programming latency
            assert 'kubeproxy_network_programming_duration_seconds_count{ip_family="IPv4"} 0.0' in text
            assert "_created" not in text and "svcproxy_sync_proxy_rules_conntrack_clear_commands_total" in text
            partial = [ln for ln in text.splitlines()
                       if ln.startswith("kubeproxy_sync_partial_proxy_rules_duration_seconds_count")]
            assert float(partial[0].split()[-1]) >= 1

            # the dataplane keeps failing: a change waits longer than 2 x sync period -> 503
            dp.fail_next = 10**6
            write(m, lb_local(hc), endpoint_slice("lb-1", "lb", [endpoint("10.0.2.6", "node-b")]))
            for _ in range(300):
                status, body = await get(f"http://127.0.0.1:{hz}/healthz")
                if status == 503:
                    break
                await asyncio.sleep(0.02)
            assert status == 503
            doc = json.loads(body)
            check_health_doc(doc, healthz=True)
            assert doc["healthy"] is False and doc["status"]["IPv4"]["healthy"] is False
            assert doc["lastUpdated"] == doc["status"]["IPv4"]["lastUpdated"] != doc["currentTime"]
            assert (await get(f"http://127.0.0.1:{hz}/livez"))[0] == 503
            status, text = await get(f"http://127.0.0.1:{mp}/metrics")
            assert 'kubeproxy_proxy_healthz_total{code="503"}' in text
            assert 'kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family="IPv4"} 0.0' not in text
            assert 'kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family="IPv4"}' in text
            dp.fail_next = 0
            await until(lambda: dp.endpoints("default/lb") == ["10.0.2.6:8080"], 5)
            status, _ = await get(f"http://127.0.0.1:{hz}/healthz")
            assert status == 200

    asyncio.run(main())
