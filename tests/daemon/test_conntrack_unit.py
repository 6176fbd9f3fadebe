"""Which UDP conntrack entries go stale on a change (kube-proxy's rules), and the commands that clear them."""

from __future__ import annotations

from svcproxy.config import NodeConfig
from svcproxy.model.parse import parse_endpoint_slice, parse_service
from svcproxy.runtime.conntrack import commands, stale_entries
from svcproxy.state import build_service_state

from .manifests_util import endpoint, endpoint_slice, service

CFG = NodeConfig(hostname="node-a")


def dns(*eps: dict, protocol: str = "UDP"):
    svc = parse_service(service("dns", "172.30.0.53", 53, protocol, target=5353, type="NodePort",
                                ports=[{"name": "p", "port": 53, "targetPort": 5353, "protocol": protocol,
                                        "nodePort": 30053}]))
    sl = parse_endpoint_slice(endpoint_slice("dns-1", "dns", list(eps), 5353, protocol))
    return build_service_state(svc, [sl], CFG)


def test_removed_udp_endpoint_is_stale() -> None:
    old = dns(endpoint("10.0.1.1"), endpoint("10.0.1.2"))
    new = dns(endpoint("10.0.1.1"))
    stale = stale_entries(old, new)
    assert [str(ep) for _, ep in stale.endpoints] == ["10.0.1.2:5353"]
    assert stale.services == []
    cmds = commands(stale, 4)
    assert ["conntrack", "-D", "-p", "udp", "--orig-dst", "172.30.0.53", "--orig-port-dst", "53",
            "--dst-nat", "10.0.1.2"] in cmds
    assert ["conntrack", "-D", "-p", "udp", "--orig-port-dst", "30053", "--dst-nat", "10.0.1.2"] in cmds


def test_endpoint_that_stops_serving_is_stale_but_terminating_and_serving_is_not() -> None:
    """kube-proxy's CleanStaleEntries: only flows to endpoints no longer serving are cleared.
    Found by bench/reliability: clearing the flows of a pod that turned terminating (while
    still serving) re-pinned UDP clients mid-flight, and now and then a reply was lost."""
    old = dns(endpoint("10.0.1.1"), endpoint("10.0.1.2"), endpoint("10.0.1.3", ready=False, serving=False))
    new = dns(endpoint("10.0.1.1", ready=False, serving=True, terminating=True),
              endpoint("10.0.1.2", ready=False, serving=False, terminating=True))
    stale = stale_entries(old, new)
    assert [str(ep) for _, ep in stale.endpoints] == ["10.0.1.2:5353"]


def test_first_ready_endpoint_clears_blackholed_entries() -> None:
    old = dns()
    new = dns(endpoint("10.0.1.1"))
    stale = stale_entries(old, new)
    assert [p.cluster_ip for p in stale.services] == ["172.30.0.53"]
    cmds = commands(stale, 4)
    assert ["conntrack", "-D", "-p", "udp", "--orig-dst", "172.30.0.53", "--orig-port-dst", "53"] in cmds
    assert ["conntrack", "-D", "-p", "udp", "--orig-port-dst", "30053"] in cmds
    # a new service with endpoints right away counts too; a deleted one has its endpoints stale
    assert stale_entries(None, new).services
    assert [str(ep) for _, ep in stale_entries(new, None).endpoints] == ["10.0.1.1:5353"]


def test_tcp_never_stale() -> None:
    assert not stale_entries(dns(endpoint("10.0.1.1"), protocol="TCP"), dns(protocol="TCP"))
    assert not stale_entries(dns(protocol="TCP"), dns(endpoint("10.0.1.1"), protocol="TCP"))


def test_many_deletions_run_only_for_entries_that_exist() -> None:
    """Found by bench/reliability: one `conntrack -D` process per stale endpoint (4,000 for 2,000
    changed objects) made a sync take 17 s. Past a few, the entries are listed once and only the
    deletions that match one run."""
    from svcproxy.runtime.conntrack import deletions, needed, parse_entries

    listing = (
        "udp      17 29 src=10.0.1.1 dst=172.30.0.53 sport=40000 dport=53 src=10.0.1.2 dst=10.0.1.1 "
        "sport=5353 dport=40000 mark=0 use=1\n"
        "udp      17 20 src=192.168.0.100 dst=192.168.0.2 sport=41000 dport=30053 src=10.0.1.1 dst=192.168.0.2 "
        "sport=5353 dport=41000 [ASSURED] mark=0 use=1\n"
        "conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.\n")
    entries = parse_entries(listing)
    assert [(e.orig_dst, e.orig_dport, e.reply_src) for e in entries] == [
        ("172.30.0.53", 53, "10.0.1.2"), ("192.168.0.2", 30053, "10.0.1.1")]
    old = dns(endpoint("10.0.1.1"), endpoint("10.0.1.2"), endpoint("10.0.1.3"))
    dels = deletions(stale_entries(old, dns()))
    assert len(dels) == 6
    assert [d.argv(4) for d in needed(dels, entries)] == [
        ["conntrack", "-D", "-p", "udp", "--orig-port-dst", "30053", "--dst-nat", "10.0.1.1"],
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "172.30.0.53", "--orig-port-dst", "53", "--dst-nat", "10.0.1.2"]]
