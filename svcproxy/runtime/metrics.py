"""kube-proxy 1.36's Prometheus metrics, under kube-proxy's names, on their own registry.

Which families exist follows kube-proxy's RegisterMetrics (pkg/proxy/metrics/metrics.go): a
core set in every mode, and the iptables_* families only in iptables mode, the nftables_*
ones only in nftables mode, so a dashboard or alert sees what it would see from kube-proxy in
the same mode. Every family is created in every mode (recording into an unregistered one is
harmless), so callers never ask which mode they run in.

Labels are kube-proxy's: the syncer's families carry `ip_family` ("IPv4", "IPv6"; a dual-stack
daemon runs one syncer per family, each recording through `Metrics.family(...)`); the change
counters and the health-probe counters are the process's, without it (in dual-stack kube-proxy
every proxier counts every event, and so do our syncers).

Besides kube-proxy's: the API client's request counts and latencies under client-go's names
(rest_client_*, recorded by sources/kubernetes.py through `Metrics.api_request`), the process
collector (process_*) and python_* in place of go_*, and svcproxy's own extras under
svcproxy_*. There is no kubernetes_build_info: svcproxy is not a Kubernetes release, and
claiming one would set off version-skew alerts; svcproxy_build_info says what runs.
"""

from __future__ import annotations

import platform
import sys

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

from .. import __version__

# kube-proxy: metrics.ExponentialBuckets(0.001, 2, 15)
SYNC_BUCKETS = tuple(0.001 * 2**i for i in range(15))
# kube-proxy: LinearBuckets(0.25, 0.25, 2) + LinearBuckets(1, 1, 59) + (60, 5, 12) + (120, 30, 7)
PROGRAMMING_BUCKETS = (0.25, 0.5, *range(1, 60), *range(60, 120, 5), *range(120, 330, 30))
# client-go's rest_client_request_duration_seconds buckets (component-base/metrics/prometheus/restclient)
REST_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
FAMILY = ["ip_family"]
NS = "kubeproxy"
# no *_created series: client_golang writes none, and each would be a family kube-proxy lacks
disable_created_metrics()

# kube-proxy's RegisterMetrics, by attribute name: the core set, then what each mode adds
CORE = ("sync_duration", "last_queued_timestamp", "last_timestamp", "endpoint_changes_pending",
        "endpoint_changes_total", "service_changes_pending", "service_changes_total", "healthz_total",
        "livez_total", "network_programming", "no_local_endpoints")
BY_MODE: dict[str, tuple[str, ...]] = {
    "iptables": ("sync_full_duration", "sync_partial_duration", "restore_failures", "partial_restore_failures",
                 "iptables_total", "iptables_last", "conntrack_reconcile_duration", "conntrack_reconcile_deleted"),
    "nftables": ("sync_full_duration", "sync_partial_duration", "nftables_sync_failures",
                 "nftables_cleanup_failures", "conntrack_reconcile_duration", "conntrack_reconcile_deleted"),
    # svcproxy's own mode: no kube-proxy counterpart, so the core set and svcproxy's extras
    "userspace": ("sync_full_duration", "sync_partial_duration"),
}
# svcproxy's own, in every mode
EXTRAS = ("conntrack_cleared", "canary_resyncs", "build_info", "rest_requests", "rest_duration")


def families_for(mode: str) -> tuple[str, ...]:
    """The attribute names of the families a daemon in this mode exports."""
    return CORE + BY_MODE.get(mode, ()) + EXTRAS


class Metrics:
    """Every family, created unregistered; __init__ registers the mode's (families_for)."""

    def __init__(self, mode: str = "iptables", process: bool = True) -> None:
        """process: add the process_* and python_* collectors (off where several daemons share a
        process, as in tests: the numbers would be the test runner's)."""
        self.mode = mode
        self.sync_duration = Histogram(
            "sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds",
            FAMILY, namespace=NS, buckets=SYNC_BUCKETS, registry=None)
        self.sync_full_duration = Histogram(
            "sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs",
            FAMILY, namespace=NS, buckets=SYNC_BUCKETS, registry=None)
        self.sync_partial_duration = Histogram(
            "sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs",
            FAMILY, namespace=NS, buckets=SYNC_BUCKETS, registry=None)
        self.last_timestamp = Gauge(
            "sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced",
            FAMILY, namespace=NS, registry=None)
        self.last_queued_timestamp = Gauge(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued", FAMILY, namespace=NS, registry=None)
        self.network_programming = Histogram(
            "network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds",
            FAMILY, namespace=NS, buckets=PROGRAMMING_BUCKETS, registry=None)
        self.endpoint_changes_pending = Gauge(
            "sync_proxy_rules_endpoint_changes_pending", "Pending proxy rules Endpoint changes",
            namespace=NS, registry=None)
        self.endpoint_changes_total = Counter(
            "sync_proxy_rules_endpoint_changes", "Cumulative proxy rules Endpoint changes",
            namespace=NS, registry=None)
        self.service_changes_pending = Gauge(
            "sync_proxy_rules_service_changes_pending", "Pending proxy rules Service changes",
            namespace=NS, registry=None)
        self.service_changes_total = Counter(
            "sync_proxy_rules_service_changes", "Cumulative proxy rules Service changes",
            namespace=NS, registry=None)
        self.restore_failures = Counter(
            "sync_proxy_rules_iptables_restore_failures", "Cumulative proxy iptables restore failures",
            FAMILY, namespace=NS, registry=None)
        self.partial_restore_failures = Counter(
            "sync_proxy_rules_iptables_partial_restore_failures",
            "Cumulative proxy iptables partial restore failures", FAMILY, namespace=NS, registry=None)
        self.iptables_total = Gauge(
            "sync_proxy_rules_iptables_total", "Total number of iptables rules owned by kube-proxy",
            ["table", "ip_family"], namespace=NS, registry=None)
        self.iptables_last = Gauge(
            "sync_proxy_rules_iptables_last", "Number of iptables rules written by kube-proxy in last sync",
            ["table", "ip_family"], namespace=NS, registry=None)
        self.nftables_sync_failures = Counter(
            "sync_proxy_rules_nftables_sync_failures", "Cumulative proxy nftables sync failures",
            FAMILY, namespace=NS, registry=None)
        self.nftables_cleanup_failures = Counter(
            "sync_proxy_rules_nftables_cleanup_failures", "Cumulative proxy nftables cleanup failures",
            FAMILY, namespace=NS, registry=None)
        self.no_local_endpoints = Gauge(
            "sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints", ["traffic_policy", "ip_family"],
            namespace=NS, registry=None)
        self.healthz_total = Counter(
            "proxy_healthz", "Cumulative proxy healthz HTTP status", ["code"], namespace=NS, registry=None)
        self.livez_total = Counter(
            "proxy_livez", "Cumulative proxy livez HTTP status", ["code"], namespace=NS, registry=None)
        self.conntrack_reconcile_duration = Histogram(
            "conntrack_reconciler_sync_duration_seconds", "ReconcileConntrackFlowsLatency latency in seconds",
            FAMILY, namespace=NS, buckets=SYNC_BUCKETS, registry=None)
        self.conntrack_reconcile_deleted = Counter(
            "conntrack_reconciler_deleted_entries", "Cumulative conntrack flows deleted by conntrack reconciler",
            FAMILY, namespace=NS, registry=None)
        # svcproxy's own
        self.conntrack_cleared = Counter(
            "sync_proxy_rules_conntrack_clear_commands",
            "Stale UDP conntrack entries deleted after a sync removed their endpoint or service",
            FAMILY, namespace="svcproxy", registry=None)
        self.build_info = Info("build", "svcproxy's version, the Python running it, and the proxy mode",
                               namespace="svcproxy", registry=None)
        self.build_info.info({"version": __version__, "python_version": platform.python_version(),
                              "platform": f"{sys.platform}/{platform.machine()}", "mode": mode})
        self.canary_resyncs = Counter(
            "canary_resyncs", "Full resyncs forced by the canary watch: our rules were flushed or deleted "
            "by someone else", FAMILY, namespace="svcproxy", registry=None)
        self.rest_requests = Counter(
            "rest_client_requests", "Number of HTTP requests, partitioned by status code, method, and host.",
            ["code", "method", "host"], registry=None)
        self.rest_duration = Histogram(
            "rest_client_request_duration_seconds", "Request latency in seconds. Broken down by verb, and host.",
            ["verb", "host"], buckets=REST_BUCKETS, registry=None)

        self.registry = CollectorRegistry()
        for name in families_for(mode):
            self.registry.register(getattr(self, name))
        if mode == "iptables":
            from .nfacct import NfacctCollector

            self.registry.register(NfacctCollector())
        if process:
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR, ProcessExtras()):
                self.registry.register(collector)

    def family(self, name: str) -> FamilyMetrics:
        """The metrics of one family's syncer ("IPv4" or "IPv6"), ip_family filled in."""
        return FamilyMetrics(self, name)

    def api_request(self, method: str, host: str, code: str, seconds: float) -> None:
        """One API request as client-go counts it: code is the HTTP status, or "<error>" when no
        response came; the latency runs to the response's headers (a watch's stream excluded)."""
        self.rest_requests.labels(code=code, method=method, host=host).inc()
        self.rest_duration.labels(verb=method, host=host).observe(seconds)


def net_dev_bytes(text: str) -> tuple[float, float]:
    """(received, transmitted) bytes over every interface of a /proc/<pid>/net/dev table."""
    rx = tx = 0.0
    for line in text.splitlines()[2:]:
        _, _, counters = line.partition(":")
        fields = counters.split()
        if len(fields) >= 9:
            rx += float(fields[0])
            tx += float(fields[8])
    return rx, tx


def address_space_limit(limits: str) -> float:
    """The "Max address space" soft limit of a /proc/<pid>/limits table, in bytes
    (unlimited: RLIM_INFINITY, as client_golang reports it)."""
    for line in limits.splitlines():
        if line.startswith("Max address space"):
            soft = line[len("Max address space"):].split()[0]
            return float(2**64 - 1) if soft == "unlimited" else float(soft)
    return float(2**64 - 1)


class ProcessExtras:
    """The process_* families client_golang's process collector has and prometheus_client's
    lacks: the network namespace's traffic and the address-space limit."""

    def collect(self):  # noqa: ANN201 - a prometheus_client collector
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        try:
            with open("/proc/self/net/dev") as f:
                rx, tx = net_dev_bytes(f.read())
            with open("/proc/self/limits") as f:
                limit = address_space_limit(f.read())
        except OSError:
            return
        yield CounterMetricFamily("process_network_receive_bytes", "Number of bytes received by the process over the network.", value=rx)
        yield CounterMetricFamily("process_network_transmit_bytes", "Number of bytes sent by the process over the network.", value=tx)
        yield GaugeMetricFamily("process_virtual_memory_max_bytes", "Maximum amount of virtual memory available in bytes.", value=limit)


class _Table:
    """A metric labelled (table, ip_family) with the family fixed: .labels(table=...) adds it."""

    def __init__(self, metric: Gauge, family: str) -> None:
        self.metric, self.ip_family = metric, family

    def labels(self, **labels: str) -> Gauge:
        return self.metric.labels(ip_family=self.ip_family, **labels)


class FamilyMetrics:
    """What one family's syncer records, under the attribute names of Metrics, ip_family filled in;
    the process-wide change counters are shared."""

    def __init__(self, metrics: Metrics, family: str) -> None:
        self.ip_family = family
        m = metrics
        for name in ("sync_duration", "sync_full_duration", "sync_partial_duration", "last_timestamp",
                     "last_queued_timestamp", "network_programming", "restore_failures", "partial_restore_failures",
                     "nftables_sync_failures", "nftables_cleanup_failures", "conntrack_reconcile_duration",
                     "conntrack_reconcile_deleted", "conntrack_cleared"):
            setattr(self, name, getattr(m, name).labels(ip_family=family))
        self.iptables_total = _Table(m.iptables_total, family)
        self.iptables_last = _Table(m.iptables_last, family)
        self.no_local_endpoints = _Table(m.no_local_endpoints, family)
        self.endpoint_changes_total = m.endpoint_changes_total
        self.service_changes_total = m.service_changes_total
