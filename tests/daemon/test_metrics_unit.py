"""The rules behind the metrics, health JSON and Events, as pure functions (no sockets, no kernel)."""

from __future__ import annotations

import json
import time

from prometheus_client import generate_latest

from svcproxy.config import NodeConfig
from svcproxy.dataplane.iptables import written_rules
from svcproxy.model.load import load_text
from svcproxy.model.parse import parse_endpoint_slice
from svcproxy.runtime.events import ObjectRef, make_event, micro_time, service_ref
from svcproxy.runtime.health import FamilyHealth, ProxierHealth, go_time, node_eligible
from svcproxy.runtime.metrics import Metrics, families_for
from svcproxy.runtime.syncer import NoLocalCounts, count_changed, no_local_endpoints
from svcproxy.sources.store import ObjectStore
from svcproxy.state import build_state

from .manifests_util import endpoint, endpoint_slice, service

CFG = NodeConfig(hostname="node-a", node_ips=("192.168.0.2",))


def test_go_time_is_rfc3339_nano_utc() -> None:
    assert go_time(None) == "0001-01-01T00:00:00Z"
    assert go_time(1796682989.5) == "2026-12-07T22:36:29.5Z"  # trailing zeros dropped, as Go does
    assert go_time(1796682989.0) == "2026-12-07T22:36:29Z"
    assert go_time(1796682989.964806775)[:25] == "2026-12-07T22:36:29.96480"


def test_node_eligible_rule() -> None:
    assert node_eligible({}, "node-a", watched=True) is False, "never seen by the API: kube-proxy says 503"
    assert node_eligible({}, "node-a", watched=False) is True, "manifests may hold no Node"
    assert node_eligible({"node-a": False}, "node-a", watched=True) is False
    assert node_eligible({"node-a": True}, "node-a", watched=True) is True


def family(name: str, last: float | None, pending: float | None, timeout: float = 60.0) -> FamilyHealth:
    return FamilyHealth(name, timeout=lambda: timeout, last_updated=lambda: last, pending_since=lambda: pending)


def test_health_document() -> None:
    now = time.time()
    h = ProxierHealth([family("IPv6", now - 5, None), family("IPv4", now - 100, time.monotonic() - 61)])
    ok, doc = h.document(now, eligible=True)
    assert not ok and list(doc) == ["lastUpdated", "currentTime", "nodeEligible", "healthy", "status"]
    assert list(doc["status"]) == ["IPv4", "IPv6"]
    assert doc["status"]["IPv4"] == {"lastUpdated": go_time(now - 100), "healthy": False}
    assert doc["lastUpdated"] == go_time(now - 5), "the most recent family's, as kube-proxy keeps it"
    ok, doc = ProxierHealth([family("IPv4", now - 5, None)]).document(now, eligible=False)
    assert not ok and doc["healthy"] is True and doc["lastUpdated"] == go_time(now - 5)
    ok, doc = ProxierHealth([family("IPv4", now - 5, None)]).document(now, eligible=None)
    assert ok and "nodeEligible" not in doc and doc["lastUpdated"] == go_time(now)
    assert json.dumps(doc, separators=(",", ":")).startswith('{"lastUpdated":')


def lb(name: str, ip: str, **policy: str) -> dict:
    return service(name, ip, type="LoadBalancer", ports=[{"name": "p", "port": 80, "targetPort": 8080,
                                                          "nodePort": 30000 + int(ip.split(".")[-1]),
                                                          "protocol": "TCP"}], **policy)


def test_no_local_endpoints_counts_local_policies_with_remote_endpoints_only() -> None:
    objs = [
        lb("remote-only", "172.30.0.1", externalTrafficPolicy="Local"),
        endpoint_slice("a", "remote-only", [endpoint("10.0.2.1", "node-b")]),
        lb("none-at-all", "172.30.0.2", externalTrafficPolicy="Local"),  # rejected, not counted
        lb("has-local", "172.30.0.3", externalTrafficPolicy="Local"),
        endpoint_slice("c", "has-local", [endpoint("10.0.1.3", "node-a")]),
        service("itp", "172.30.0.4", internalTrafficPolicy="Local"),
        endpoint_slice("d", "itp", [endpoint("10.0.2.4", "node-b")]),
        service("cluster", "172.30.0.5"),
        endpoint_slice("e", "cluster", [endpoint("10.0.2.5", "node-b")]),
    ]
    state = build_state(load_text(json.dumps({"kind": "List", "items": objs})), CFG)
    assert no_local_endpoints(state, CFG) == (1, 1)  # (internal: itp, external: remote-only)
    # kept up to date by partial syncs: a local endpoint appears for remote-only, itp goes away
    counts = NoLocalCounts()
    assert counts.update(state, CFG, None) == (1, 1)
    objs[1] = endpoint_slice("a", "remote-only", [endpoint("10.0.1.1", "node-a")])
    later = build_state(load_text(json.dumps({"kind": "List", "items": objs[:5] + objs[7:]})), CFG)
    assert counts.update(later, CFG, {"default/remote-only", "default/itp"}) == (0, 0)
    assert counts.update(later, CFG, None) == no_local_endpoints(later, CFG) == (0, 0)


def test_count_changed_says_what_a_full_sync_changed() -> None:
    objs = [service("web", "172.30.0.1"), endpoint_slice("w", "web", [endpoint("10.0.1.1")])]
    a = build_state(load_text(json.dumps({"kind": "List", "items": objs})), CFG)
    same = build_state(load_text(json.dumps({"kind": "List", "items": objs})), CFG)
    assert count_changed(a, same) == 0
    assert count_changed(None, a) == 1
    more = build_state(load_text(json.dumps({"kind": "List", "items": [*objs, service("db", "172.30.0.2")]})), CFG)
    assert count_changed(a, more) == 1 and count_changed(more, a) == 1


def test_written_rules_per_table() -> None:
    data = "*filter\n:KUBE-FORWARD - [0:0]\n-A KUBE-FORWARD -j ACCEPT\nCOMMIT\n*nat\n-A A -j B\n-I C 1 -j D\n-X E\nCOMMIT\n"
    assert written_rules([data]) == {"filter": 1, "nat": 2}
    assert written_rules([""]) == {"filter": 0, "nat": 0}


def test_store_trigger_times_follow_kube_proxy() -> None:
    store = ObjectStore()
    raw = endpoint_slice("w", "web", [endpoint("10.0.1.1")])
    store.put("m", parse_endpoint_slice(raw), trigger_time=store.started - 10)  # before we started
    store.put("m", parse_endpoint_slice(endpoint_slice("w", "web", [endpoint("10.0.1.2")])))  # no annotation
    c = store.take_changes()
    assert c.trigger_times == {} and c.endpoint_events == 2 and c.queued_at is not None
    t = time.time()
    store.put("m", parse_endpoint_slice(raw), trigger_time=t)
    assert store.pending.trigger_times == {"default/web": [t]}
    store.delete("m", "EndpointSlice", "default/w")  # a deletion drops them: its annotation is old
    assert store.pending.trigger_times == {}


def test_families_by_mode() -> None:
    def names(mode: str) -> set[str]:
        text = generate_latest(Metrics(mode, process=False).registry).decode()
        return {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE ")}

    ipt, nft = names("iptables"), names("nftables")
    assert "kubeproxy_sync_proxy_rules_iptables_total" in ipt and "kubeproxy_sync_proxy_rules_iptables_last" in ipt
    assert not any("iptables" in n for n in nft)
    assert "kubeproxy_sync_proxy_rules_nftables_sync_failures_total" in nft and not any("nftables" in n for n in ipt)
    assert all(n.startswith(("kubeproxy_", "svcproxy_", "rest_client_")) for n in ipt | nft)
    assert "restore_failures" in families_for("iptables") and "restore_failures" not in families_for("nftables")


def test_events_as_client_go_makes_them() -> None:
    assert micro_time(1796682989.5) == "2026-12-07T22:36:29.500000Z"
    e = make_event(service_ref("ns1/lb"), "Warning", "FailedToStartServiceHealthcheck", "Listen", "x" * 2000,
                   1796682989.5, "kube-proxy-host")
    assert e["metadata"] == {"name": f"lb.{int(1796682989.5 * 1e9):x}", "namespace": "ns1"}
    assert e["regarding"] == {"apiVersion": "v1", "kind": "Service", "name": "lb", "namespace": "ns1"}
    assert e["reportingController"] == "kube-proxy" and len(e["note"]) == 1024
    node = make_event(ObjectRef("Node", "node-a"), "Normal", "Starting", "StartKubeProxy", "", 0.0, "i")
    assert node["metadata"]["namespace"] == "default" and node["regarding"] == {"apiVersion": "v1", "kind": "Node",
                                                                                 "name": "node-a"}
