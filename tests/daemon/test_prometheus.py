"""Monitoring works unchanged: a real Prometheus scrapes `svcproxy run` in a network namespace.

The node namespace holds the stand-in API server, the daemon (iptables mode, fed by the API so
that Events and API requests happen), and Prometheus (Debian's package) scraping the daemon's
metrics port as job "kube-proxy". Checked:
- every query of kubernetes-mixin's kube-proxy dashboard (dashboards/proxy.libsonnet) returns
  series, but go_goroutines (there are none in Python) and the 3xx/4xx request rates (none
  happen, as with kube-proxy);
- kubernetes-mixin's alerts on kube-proxy (KubeProxyDown, KubeProxyInstanceUnreachable,
  KubeClientErrors) evaluate and stay quiet while all is well;
- an alert on sync staleness (a queued change unprogrammed for longer than a few seconds)
  fires once iptables-restore is made to fail, and clears when it works again;
- the metric families scraped match kube-proxy 1.36's in iptables mode (name, type, labels).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .manifests_util import endpoint, endpoint_slice, service
from .netenv import PYTHON, ApiServer, Daemon, NetEnv

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs prometheus (scripts/setup.sh --test)")]

PROM = "127.0.0.1:19090"
# kubernetes-mixin's defaults for a single cluster: cluster="" matches series without the label
SEL = 'cluster="", job="kube-proxy", instance=~".*"'
DASHBOARD = {
    "Up": 'sum(up{cluster="", job="kube-proxy"})',
    "Rules Sync Rate": f"sum(rate(kubeproxy_sync_proxy_rules_duration_seconds_count{{{SEL}}}[5m]))",
    "Rule Sync Latency 99th Quantile":
        f"histogram_quantile(0.99,rate(kubeproxy_sync_proxy_rules_duration_seconds_bucket{{{SEL}}}[5m]))",
    "Network Programming Rate": f"sum(rate(kubeproxy_network_programming_duration_seconds_count{{{SEL}}}[5m]))",
    "Network Programming Latency 99th Quantile":
        f"histogram_quantile(0.99, sum(rate(kubeproxy_network_programming_duration_seconds_bucket{{{SEL}}}[5m]))"
        " by (instance, le))",
    "Kube API Request Rate 2xx": f'sum(rate(rest_client_requests_total{{{SEL},code=~"2.."}}[5m]))',
    "Kube API Request Rate 5xx": f'sum(rate(rest_client_requests_total{{{SEL},code=~"5.."}}[5m]))',
    "Post Request Latency 99th Quantile":
        f'histogram_quantile(0.99, sum(rate(rest_client_request_duration_seconds_bucket{{{SEL},verb="POST"}}[5m]))'
        " by (verb, url, le))",
    "Get Request Latency 99th Quantile":
        f'histogram_quantile(0.99, sum(rate(rest_client_request_duration_seconds_bucket{{{SEL}, verb="GET"}}[5m]))'
        " by (verb, url, le))",
    "Memory": f"process_resident_memory_bytes{{{SEL}}}",
    "CPU usage": f"rate(process_cpu_seconds_total{{{SEL}}}[5m])",
    "instance variable": 'count by (instance) (kubeproxy_network_programming_duration_seconds_bucket{cluster="", '
                         'job="kube-proxy"})',
}
# what the dashboard queries and kube-proxy does not answer either (or cannot: no Go runtime)
DASHBOARD_EMPTY = {
    "Goroutines": f"go_goroutines{{{SEL}}}",
    "Kube API Request Rate 3xx": f'sum(rate(rest_client_requests_total{{{SEL},code=~"3.."}}[5m]))',
    "Kube API Request Rate 4xx": f'sum(rate(rest_client_requests_total{{{SEL},code=~"4.."}}[5m]))',
}
RULES = """groups:
- name: kubernetes-system-kube-proxy   # kubernetes-mixin's, as rendered for job="kube-proxy"
  rules:
  - alert: KubeProxyDown
    expr: absent(up{job="kube-proxy"} == 1)
    for: 15m
  - alert: KubeProxyInstanceUnreachable
    expr: up{job="kube-proxy"} == 0
    for: 15m
- name: kubernetes-system
  rules:
  - alert: KubeClientErrors
    expr: (sum(rate(rest_client_requests_total{code=~"5.."}[5m])) by (cluster, instance, job, namespace)
      / sum(rate(rest_client_requests_total[5m])) by (cluster, instance, job, namespace)) > 0.01
    for: 15m
- name: svcproxy-test
  rules:
  # a change queued after the last successful sync, and waiting for more than 3 seconds (in a
  # real cluster: minutes; kube-proxy's own /healthz says 503 after 2 x --sync-period)
  - alert: KubeProxySyncStale
    expr: |
      kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds > kubeproxy_sync_proxy_rules_last_timestamp_seconds
      and time() - kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds > 3
    for: 2s
"""
# kube-proxy 1.36.2 in iptables mode, scraped (the contract notes): family -> (type, labels);
# the families dashboards and alerts read (kubeproxy_*, rest_client_* they query, process_*)
KUBE_PROXY_FAMILIES = {
    "kubeproxy_conntrack_reconciler_deleted_entries_total": ("counter", {"ip_family"}),
    "kubeproxy_conntrack_reconciler_sync_duration_seconds": ("histogram", {"ip_family"}),
    "kubeproxy_network_programming_duration_seconds": ("histogram", {"ip_family"}),
    "kubeproxy_proxy_healthz_total": ("counter", {"code"}),
    "kubeproxy_proxy_livez_total": ("counter", {"code"}),
    "kubeproxy_sync_full_proxy_rules_duration_seconds": ("histogram", {"ip_family"}),
    "kubeproxy_sync_partial_proxy_rules_duration_seconds": ("histogram", {"ip_family"}),
    "kubeproxy_sync_proxy_rules_duration_seconds": ("histogram", {"ip_family"}),
    "kubeproxy_sync_proxy_rules_endpoint_changes_pending": ("gauge", set()),
    "kubeproxy_sync_proxy_rules_endpoint_changes_total": ("counter", set()),
    "kubeproxy_sync_proxy_rules_iptables_last": ("gauge", {"ip_family", "table"}),
    "kubeproxy_sync_proxy_rules_iptables_total": ("gauge", {"ip_family", "table"}),
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds": ("gauge", {"ip_family"}),
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds": ("gauge", {"ip_family"}),
    "kubeproxy_sync_proxy_rules_no_local_endpoints_total": ("gauge", {"ip_family", "traffic_policy"}),
    "kubeproxy_sync_proxy_rules_service_changes_pending": ("gauge", set()),
    "kubeproxy_sync_proxy_rules_service_changes_total": ("counter", set()),
    "process_cpu_seconds_total": ("counter", set()),
    "process_max_fds": ("gauge", set()),
    "process_network_receive_bytes_total": ("counter", set()),
    "process_network_transmit_bytes_total": ("counter", set()),
    "process_open_fds": ("gauge", set()),
    "process_resident_memory_bytes": ("gauge", set()),
    "process_start_time_seconds": ("gauge", set()),
    "process_virtual_memory_bytes": ("gauge", set()),
    "process_virtual_memory_max_bytes": ("gauge", set()),
    "rest_client_request_duration_seconds": ("histogram", {"host", "verb"}),
    "rest_client_requests_total": ("counter", {"code", "host", "method"}),
}
# kube-proxy's nfacct counters: the daemon creates their objects and its rules count into them
# (test_nfacct_kernel.py checks the counts)
NFACCT = {"kubeproxy_iptables_ct_state_invalid_dropped_packets_total": ("counter", set()),
          "kubeproxy_iptables_localhost_nodeports_accepted_packets_total": ("counter", set())}
# iptables_restore_failures: registered by kube-proxy, shown once one happens (as here)
RESTORE_FAILURES = {"kubeproxy_sync_proxy_rules_iptables_restore_failures_total": ("counter", {"ip_family"}),
                    "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total": ("counter", {"ip_family"})}


def trigger_annotated(name: str, svc: str, eps: list[dict]) -> dict:
    """An EndpointSlice as the endpoints controller writes it: with its last-change-trigger-time."""
    sl = endpoint_slice(name, svc, eps)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    sl["metadata"]["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": now}
    return sl


class Prometheus:
    """Prometheus in the node namespace, scraping the daemon every second; queried from there."""

    def __init__(self, env: NetEnv, tmp: Path) -> None:
        self.env = env
        (tmp / "rules.yml").write_text(RULES)
        (tmp / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [rules.yml]\n"
            "scrape_configs:\n"
            "- job_name: kube-proxy\n"
            "  static_configs: [{targets: ['127.0.0.1:10249']}]\n")
        subprocess.run(["promtool", "check", "config", str(tmp / "prometheus.yml")], check=True, capture_output=True)
        self.log = open(tmp / "prometheus.log", "w")  # noqa: SIM115 - closed by the env's teardown
        self.proc = env.spawn(env.node, ["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
                                         f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address={PROM}"],
                              stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path: str) -> dict:
        code = ("import sys, urllib.request; "
                "sys.stdout.write(urllib.request.urlopen('http://" + PROM + "' + sys.argv[1], timeout=10).read().decode())")
        return json.loads(self.env.exec(self.env.node, PYTHON, "-c", code, path))

    def query(self, expr: str) -> list[dict]:
        from urllib.parse import quote

        doc = self.get(f"/api/v1/query?query={quote(expr)}")
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def alerts(self) -> dict[str, str]:
        """Alert name -> state ("pending", "firing") of the active alerts."""
        return {a["labels"]["alertname"]: a["state"] for a in self.get("/api/v1/alerts")["data"]["alerts"]}

    def wait(self, what: str, check, timeout: float = 30):  # noqa: ANN001, ANN201 - a predicate
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RuntimeError, json.JSONDecodeError):
                result = check()
                if result:
                    return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout}s")
            time.sleep(0.5)


def scrape(env: NetEnv) -> str:
    code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:10249/metrics').read().decode())"
    return env.exec(env.node, PYTHON, "-c", code)


def families(text: str) -> dict[str, tuple[str, set[str]]]:
    """name (counters with _total, as the notes list them) -> (type, label names)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        labels = {k for s in fam.samples for k in s.labels if k not in ("le", "quantile")}
        out[name] = (fam.type, labels)
    return out


def test_prometheus_dashboards_and_alerts(env: NetEnv, tmp_path: Path) -> None:
    api = ApiServer(env)
    api.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}},
              service("web", "172.30.0.10", target=8080),
              endpoint_slice("web-1", "web", [endpoint("10.0.1.10", "node-a")]),
              service("local", "172.30.0.11", target=8080, type="NodePort", externalTrafficPolicy="Local"),
              endpoint_slice("local-1", "local", [endpoint("10.0.1.11", "node-b")]))
    # iptables-restore that fails while a flag file exists: the kernel apply failing on demand
    wrappers, flag = tmp_path / "bin", tmp_path / "fail-restore"
    wrappers.mkdir()
    real = shutil.which("iptables-restore")
    (wrappers / "iptables-restore").write_text(
        f'#!/bin/sh\nif [ -e {flag} ]; then echo "injected failure" >&2; exit 1; fi\nexec {real} "$@"\n')
    (wrappers / "iptables-restore").chmod(0o755)
    daemon = Daemon(env, None, "iptables", tmp_path / "daemon.log", "--master", api.url, "--sync-period", "2s")
    daemon.environ = {"PATH": f"{wrappers}:{os.environ['PATH']}"}
    daemon.start()
    daemon.wait_sync(0)
    prom = Prometheus(env, tmp_path)
    prom.wait("Prometheus scrapes the daemon", lambda: prom.query('up{job="kube-proxy"} == 1'))

    # endpoint changes as the endpoints controller makes them (annotated); an API hiccup
    for ip in ("10.0.1.20", "10.0.1.21", "10.0.1.22"):
        api.apply(trigger_annotated("web-1", "web", [endpoint(ip, "node-a")]))
        time.sleep(1)
    api.fail_requests(2)
    api.drop_watches()
    time.sleep(4)  # a few scrapes after the changes, for rate() over them

    for panel, expr in DASHBOARD.items():
        prom.wait(f"{panel}: {expr}", lambda expr=expr: prom.query(expr), timeout=20)
    for panel, expr in DASHBOARD_EMPTY.items():
        assert prom.query(expr) == [], panel
    assert float(prom.query(DASHBOARD["Up"])[0]["value"][1]) == 1
    assert float(prom.query(DASHBOARD["Rules Sync Rate"])[0]["value"][1]) > 0
    assert float(prom.query(DASHBOARD["Network Programming Rate"])[0]["value"][1]) > 0
    latency = float(prom.query(DASHBOARD["Network Programming Latency 99th Quantile"])[0]["value"][1])
    assert 0 < latency <= 5, latency
    # the alerts' expressions evaluate, and none is pending or firing while all is well
    assert prom.query('absent(up{job="kube-proxy"} == 1)') == []
    assert prom.query("sum(rate(rest_client_requests_total[5m])) by (instance, job)") != []
    assert prom.alerts().keys() <= {"KubeClientErrors"}, prom.alerts()  # the injected 500s may count

    # the scraped families are kube-proxy's (iptables mode); probes first, so every family has samples
    for path in ("healthz", "livez"):
        env.exec(env.node, PYTHON, "-c", f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:10256/{path}')")
    scraped = families(scrape(env))
    for name, expected in KUBE_PROXY_FAMILIES.items():
        assert scraped.get(name) == expected, (name, scraped.get(name), expected)
    for name, expected in NFACCT.items():
        assert scraped.get(name) == expected, (name, scraped.get(name), expected)
    assert all(not n.startswith("kubeproxy_sync_proxy_rules_nftables") for n in scraped)

    # the kernel apply fails: the staleness alert fires; /healthz turns 503 after 2 x sync period
    flag.touch()
    api.apply(trigger_annotated("web-1", "web", [endpoint("10.0.1.30", "node-a")]))
    prom.wait("KubeProxySyncStale fires", lambda: prom.alerts().get("KubeProxySyncStale") == "firing", timeout=30)
    code = "import urllib.request, urllib.error\ntry: urllib.request.urlopen('http://127.0.0.1:10256/healthz')\n" \
           "except urllib.error.HTTPError as e: print(e.code)\nelse: print(200)"
    assert env.exec(env.node, PYTHON, "-c", code).strip() == "503"
    failed = families(scrape(env))
    for name, (typ, labels) in RESTORE_FAILURES.items():
        assert failed.get(name) == (typ, labels), (name, failed.get(name))
    assert prom.query('kubeproxy_sync_proxy_rules_iptables_restore_failures_total{job="kube-proxy"} > 0')

    # it works again: the change is programmed and the alert clears
    flag.unlink()
    prom.wait("KubeProxySyncStale clears", lambda: "KubeProxySyncStale" not in prom.alerts(), timeout=30)
    assert "injected failure" in daemon.log()
    daemon.stop()
