"""kube-proxy's Prometheus metrics, under kube-proxy's names, on their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# kube-proxy: metrics.ExponentialBuckets(0.001, 2, 15)
SYNC_BUCKETS = tuple(0.001 * 2**i for i in range(15))
# kube-proxy: LinearBuckets(0.25, 0.25, 2) + LinearBuckets(1, 1, 59) + (60, 5, 12) + (120, 30, 7)
PROGRAMMING_BUCKETS = (0.25, 0.5, *range(1, 60), *range(60, 120, 5), *range(120, 330, 30))


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ns = "kubeproxy"
        self.sync_duration = Histogram(
            "sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds",
            namespace=ns, buckets=SYNC_BUCKETS, registry=r)
        self.sync_full_duration = Histogram(
            "sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs",
            namespace=ns, buckets=SYNC_BUCKETS, registry=r)
        self.sync_partial_duration = Histogram(
            "sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs",
            namespace=ns, buckets=SYNC_BUCKETS, registry=r)
        self.last_timestamp = Gauge(
            "sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced",
            namespace=ns, registry=r)
        self.last_queued_timestamp = Gauge(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued", namespace=ns, registry=r)
        self.network_programming = Histogram(
            "network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds",
            namespace=ns, buckets=PROGRAMMING_BUCKETS, registry=r)
        self.restore_failures = Counter(
            "sync_proxy_rules_iptables_restore_failures", "Cumulative proxy iptables restore failures",
            namespace=ns, registry=r)
        self.partial_restore_failures = Counter(
            "sync_proxy_rules_iptables_partial_restore_failures",
            "Cumulative proxy iptables partial restore failures", namespace=ns, registry=r)
        self.endpoint_changes_pending = Gauge(
            "sync_proxy_rules_endpoint_changes_pending", "Pending proxy rules Endpoint changes",
            namespace=ns, registry=r)
        self.endpoint_changes_total = Counter(
            "sync_proxy_rules_endpoint_changes", "Cumulative proxy rules Endpoint changes",
            namespace=ns, registry=r)
        self.service_changes_pending = Gauge(
            "sync_proxy_rules_service_changes_pending", "Pending proxy rules Service changes",
            namespace=ns, registry=r)
        self.service_changes_total = Counter(
            "sync_proxy_rules_service_changes", "Cumulative proxy rules Service changes",
            namespace=ns, registry=r)
        self.iptables_total = Gauge(
            "sync_proxy_rules_iptables_total", "Total number of iptables rules owned by kube-proxy",
            ["table"], namespace=ns, registry=r)
        self.no_local_endpoints = Gauge(
            "sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints", ["traffic_policy"],
            namespace=ns, registry=r)
        self.healthz_total = Counter(
            "proxy_healthz", "Cumulative proxy healthz HTTP status", ["code"], namespace=ns, registry=r)
        self.livez_total = Counter(
            "proxy_livez", "Cumulative proxy livez HTTP status", ["code"], namespace=ns, registry=r)
        self.conntrack_cleared = Counter(
            "sync_proxy_rules_conntrack_clear_commands", "Stale UDP conntrack deletions issued (svcproxy)",
            namespace=ns, registry=r)
