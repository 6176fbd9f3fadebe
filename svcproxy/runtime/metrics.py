"""kube-proxy's Prometheus metrics, under kube-proxy's names, on their own registry.

As in kube-proxy (1.33+), the metrics a proxier records carry an `ip_family` label ("IPv4",
"IPv6"): a dual-stack daemon runs one syncer per family, and each records through
`Metrics.family(...)`, a view with the label filled in. Health-probe counters are the
process's, without it.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# kube-proxy: metrics.ExponentialBuckets(0.001, 2, 15)
SYNC_BUCKETS = tuple(0.001 * 2**i for i in range(15))
# kube-proxy: LinearBuckets(0.25, 0.25, 2) + LinearBuckets(1, 1, 59) + (60, 5, 12) + (120, 30, 7)
PROGRAMMING_BUCKETS = (0.25, 0.5, *range(1, 60), *range(60, 120, 5), *range(120, 330, 30))
FAMILY = ["ip_family"]
# the metrics one family's syncer records (each has the ip_family label first)
PER_FAMILY = ("sync_duration", "sync_full_duration", "sync_partial_duration", "last_timestamp",
              "last_queued_timestamp", "network_programming", "restore_failures", "partial_restore_failures",
              "endpoint_changes_pending", "endpoint_changes_total", "service_changes_pending",
              "service_changes_total", "iptables_total", "no_local_endpoints", "conntrack_cleared")


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ns = "kubeproxy"
        self.sync_duration = Histogram(
            "sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds",
            FAMILY, namespace=ns, buckets=SYNC_BUCKETS, registry=r)
        self.sync_full_duration = Histogram(
            "sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs",
            FAMILY, namespace=ns, buckets=SYNC_BUCKETS, registry=r)
        self.sync_partial_duration = Histogram(
            "sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs",
            FAMILY, namespace=ns, buckets=SYNC_BUCKETS, registry=r)
        self.last_timestamp = Gauge(
            "sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced",
            FAMILY, namespace=ns, registry=r)
        self.last_queued_timestamp = Gauge(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued", FAMILY, namespace=ns, registry=r)
        self.network_programming = Histogram(
            "network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds",
            FAMILY, namespace=ns, buckets=PROGRAMMING_BUCKETS, registry=r)
        self.restore_failures = Counter(
            "sync_proxy_rules_iptables_restore_failures", "Cumulative proxy iptables restore failures",
            FAMILY, namespace=ns, registry=r)
        self.partial_restore_failures = Counter(
            "sync_proxy_rules_iptables_partial_restore_failures",
            "Cumulative proxy iptables partial restore failures", FAMILY, namespace=ns, registry=r)
        self.endpoint_changes_pending = Gauge(
            "sync_proxy_rules_endpoint_changes_pending", "Pending proxy rules Endpoint changes",
            FAMILY, namespace=ns, registry=r)
        self.endpoint_changes_total = Counter(
            "sync_proxy_rules_endpoint_changes", "Cumulative proxy rules Endpoint changes",
            FAMILY, namespace=ns, registry=r)
        self.service_changes_pending = Gauge(
            "sync_proxy_rules_service_changes_pending", "Pending proxy rules Service changes",
            FAMILY, namespace=ns, registry=r)
        self.service_changes_total = Counter(
            "sync_proxy_rules_service_changes", "Cumulative proxy rules Service changes",
            FAMILY, namespace=ns, registry=r)
        self.iptables_total = Gauge(
            "sync_proxy_rules_iptables_total", "Total number of iptables rules owned by kube-proxy",
            ["ip_family", "table"], namespace=ns, registry=r)
        self.no_local_endpoints = Gauge(
            "sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints", ["ip_family", "traffic_policy"],
            namespace=ns, registry=r)
        self.healthz_total = Counter(
            "proxy_healthz", "Cumulative proxy healthz HTTP status", ["code"], namespace=ns, registry=r)
        self.livez_total = Counter(
            "proxy_livez", "Cumulative proxy livez HTTP status", ["code"], namespace=ns, registry=r)
        self.conntrack_cleared = Counter(
            "sync_proxy_rules_conntrack_clear_commands", "Stale UDP conntrack deletions issued (svcproxy)",
            FAMILY, namespace=ns, registry=r)
        # -- failure detection (issue 27): kube-proxy's conntrack reconciler and nftables
        # failure counters, and svcproxy's canary watch; each syncer records its family's
        # through .labels(ip_family=...). One block, so it merges apart from the rest.
        self.conntrack_reconcile_duration = Histogram(
            "conntrack_reconciler_sync_duration_seconds", "ReconcileConntrackFlowsLatency latency in seconds",
            FAMILY, namespace=ns, buckets=SYNC_BUCKETS, registry=r)
        self.conntrack_reconcile_deleted = Counter(
            "conntrack_reconciler_deleted_entries", "Cumulative conntrack flows deleted by conntrack reconciler",
            FAMILY, namespace=ns, registry=r)
        self.nftables_sync_failures = Counter(
            "sync_proxy_rules_nftables_sync_failures", "Cumulative proxy nftables sync failures",
            FAMILY, namespace=ns, registry=r)
        self.nftables_cleanup_failures = Counter(
            "sync_proxy_rules_nftables_cleanup_failures", "Cumulative proxy nftables cleanup failures",
            FAMILY, namespace=ns, registry=r)
        self.canary_resyncs = Counter(
            "canary_resyncs", "Full resyncs forced by the canary watch: our rules were flushed or deleted "
            "by someone else (svcproxy)", FAMILY, namespace="svcproxy", registry=r)

    def family(self, name: str) -> FamilyMetrics:
        """The metrics of one family's syncer ("IPv4" or "IPv6"), ip_family filled in."""
        return FamilyMetrics(self, name)


class _Labelled:
    """A labelled metric with ip_family fixed: .labels(table=...) adds it."""

    def __init__(self, metric: Any, family: str) -> None:
        self.metric, self.ip_family = metric, family

    def labels(self, **labels: str) -> Any:
        return self.metric.labels(ip_family=self.ip_family, **labels)


class FamilyMetrics:
    """The per-family metrics under the attribute names of Metrics, for one syncer."""

    def __init__(self, metrics: Metrics, family: str) -> None:
        self.ip_family = family
        for name in PER_FAMILY:
            metric = getattr(metrics, name)
            extra = [n for n in metric._labelnames if n != "ip_family"]
            setattr(self, name, _Labelled(metric, family) if extra else metric.labels(ip_family=family))
