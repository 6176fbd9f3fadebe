"""Which UDP conntrack entries the reconciler deletes (kube-proxy 1.36's CleanStaleEntries), and
when it runs: pure, except the last test, which deletes through ctnetlink in a namespace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from svcproxy.config import NodeConfig
from svcproxy.lab.netns import scratch_namespace
from svcproxy.model.parse import parse_endpoint_slice, parse_service
from svcproxy.runtime.conntrack import Entry, frontends, needs_reconcile, parse_entries, stale
from svcproxy.state import ProxyState, build_service_state

from .manifests_util import endpoint, endpoint_slice, service

CFG = NodeConfig(hostname="node-a")


def dns(*eps: dict, protocol: str = "UDP", **spec):
    svc = parse_service(service("dns", "172.30.0.53", 53, protocol, target=5353, type="NodePort",
                                ports=[{"name": "p", "port": 53, "targetPort": 5353, "protocol": protocol,
                                        "nodePort": 30053}], **spec))
    sl = parse_endpoint_slice(endpoint_slice("dns-1", "dns", list(eps), 5353, protocol))
    return build_service_state(svc, [sl], CFG)


def state(*svcs) -> ProxyState:
    return ProxyState(services={s.key: s for s in svcs})


def flow(dst: str, dport: int, reply_src: str, reply_sport: int = 5353) -> Entry:
    return Entry("10.0.9.9", dst, 40000, dport, reply_src, reply_sport)


def test_flows_to_endpoints_no_longer_serving_are_stale() -> None:
    fronts = frontends(state(dns(endpoint("10.0.1.1"))))
    kept, gone = flow("172.30.0.53", 53, "10.0.1.1"), flow("172.30.0.53", 53, "10.0.1.2")
    via_node_port = flow("192.168.0.2", 30053, "10.0.1.2")
    assert stale([kept, gone, via_node_port, flow("192.168.0.2", 30053, "10.0.1.1")], fronts) == [gone, via_node_port]


def test_endpoint_port_counts_too() -> None:
    """kube-proxy keys endpoints by ip:port: a pod that now serves on another port is stale."""
    fronts = frontends(state(dns(endpoint("10.0.1.1"))))
    assert stale([flow("172.30.0.53", 53, "10.0.1.1", 5300)], fronts)


def test_terminating_but_serving_keeps_its_flows() -> None:
    """Found by bench/reliability: clearing the flows of a pod that turned terminating (while
    still serving) re-pinned UDP clients mid-flight, and now and then a reply was lost."""
    s = state(dns(endpoint("10.0.1.1", ready=False, serving=True, terminating=True),
                  endpoint("10.0.1.2", ready=False, serving=False, terminating=True)))
    assert stale([flow("172.30.0.53", 53, "10.0.1.1"), flow("172.30.0.53", 53, "10.0.1.2")],
                 frontends(s)) == [flow("172.30.0.53", 53, "10.0.1.2")]


def test_blackholed_flow_is_cleared_once_endpoints_exist() -> None:
    """A flow sent while the service had no endpoint was never DNATed: its reply source is the
    service IP itself, no endpoint: stale as soon as an endpoint serves."""
    blackholed = flow("172.30.0.53", 53, "172.30.0.53", 53)
    assert stale([blackholed], frontends(state(dns()))) == []  # nothing to move it to yet
    assert stale([blackholed], frontends(state(dns(endpoint("10.0.1.1"))))) == [blackholed]


def test_external_and_load_balancer_ips_are_frontends() -> None:
    fronts = frontends(state(dns(endpoint("10.0.1.1"), externalIPs=["192.0.2.7"])))
    assert stale([flow("192.0.2.7", 53, "10.0.1.9"), flow("192.0.2.8", 53, "10.0.1.9")], fronts) == [
        flow("192.0.2.7", 53, "10.0.1.9")]


def test_tcp_services_are_not_frontends() -> None:
    fronts = frontends(state(dns(endpoint("10.0.1.1"), protocol="TCP")))
    assert stale([flow("172.30.0.53", 53, "10.0.1.2")], fronts) == []


def test_reconcile_runs_at_the_first_sync_and_when_a_udp_service_changes() -> None:
    one, two = dns(endpoint("10.0.1.1")), dns(endpoint("10.0.1.2"))
    assert needs_reconcile(None, state(one), None)  # first sync, after a restart
    assert not needs_reconcile(None, state(dns(endpoint("10.0.1.1"), protocol="TCP")), None)
    assert needs_reconcile(state(one), state(two), {"default/dns"})
    assert needs_reconcile(state(one), state(), None)  # deleted
    assert not needs_reconcile(state(one), state(one), None)  # a periodic sync with no change
    tcp_old, tcp_new = dns(endpoint("10.0.1.1"), protocol="TCP"), dns(endpoint("10.0.1.2"), protocol="TCP")
    assert not needs_reconcile(state(tcp_old), state(tcp_new), {"default/dns"})


def test_conntrack_tool_listing_is_parsed() -> None:
    listing = (
        "udp      17 29 src=10.0.1.1 dst=172.30.0.53 sport=40000 dport=53 src=10.0.1.2 dst=10.0.1.1 "
        "sport=5353 dport=40000 mark=0 use=1\n"
        "udp      17 20 src=192.168.0.100 dst=192.168.0.2 sport=41000 dport=30053 src=10.0.1.1 dst=192.168.0.2 "
        "sport=5353 dport=41000 [ASSURED] mark=0 use=1\n"
        "conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.\n")
    assert parse_entries(listing) == [Entry("10.0.1.1", "172.30.0.53", 40000, 53, "10.0.1.2", 5353),
                                      Entry("192.168.0.100", "192.168.0.2", 41000, 30053, "10.0.1.1", 5353)]


def test_ipv6_addresses_compare_by_value() -> None:
    svc = parse_service(service("dns6", "fd00:30::53", 53, "UDP", target=5353))
    sl = endpoint_slice("dns6-1", "dns6", [endpoint("fd00:1::1")], 5353, "UDP")
    sl["addressType"] = "IPv6"
    s = build_service_state(svc, [parse_endpoint_slice(sl)], NodeConfig(hostname="node-a", ip_family=6))
    fronts = frontends(state(s))
    assert stale([Entry("fd00::9", "fd00:30:0::53", 1, 53, "fd00:1:0:0::1", 5353)], fronts) == []
    assert stale([Entry("fd00::9", "fd00:30::53", 1, 53, "fd00:1::2", 5353)], fronts)


KERNEL_RECONCILE = """
import socket, sys
from svcproxy.config import NodeConfig
from svcproxy.model.parse import parse_endpoint_slice, parse_service
from svcproxy.runtime.conntrack import reconcile
from svcproxy.state import ProxyState, build_service_state
from tests.daemon.manifests_util import endpoint, endpoint_slice, service

fam = int(sys.argv[1])
if sys.argv[2] == "tool":  # netlink unavailable: the conntrack tool does the same
    from svcproxy.runtime import ctnetlink
    def refuse(family):
        raise OSError("no ctnetlink here")
    ctnetlink.Conntrack = refuse
vip, pod = ("127.0.0.53", "10.0.1.1") if fam == 4 else ("::1", "fd00:1::1")
svc = parse_service(service("dns", vip, 53, "UDP", target=5353))
sl = endpoint_slice("dns-1", "dns", [endpoint(pod)], 5353, "UDP")
sl["addressType"] = f"IPv{fam}"
s = build_service_state(svc, [parse_endpoint_slice(sl)], NodeConfig(hostname="node-a", ip_family=fam))
sock = socket.socket(socket.AF_INET6 if fam == 6 else socket.AF_INET, socket.SOCK_DGRAM)
sock.sendto(b"x", (vip, 53))  # not DNATed: its reply source is the service address, no endpoint
first = reconcile(ProxyState(services={s.key: s}), fam)
again = reconcile(ProxyState(services={s.key: s}), fam)
print(first.deleted, again.deleted)
"""


@pytest.mark.kernel
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("path", ["netlink", "tool"])
def test_reconcile_deletes_in_the_kernel_in_both_families(family: int, path: str) -> None:
    """The ctnetlink path and the conntrack tool's against the kernel, in a namespace of its
    own (a ct rule makes the kernel track the flow)."""
    root = Path(__file__).resolve().parents[2]
    with scratch_namespace("ctr") as ns:
        run = ["ip", "netns", "exec", ns]
        subprocess.run([*run, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run([*run, "nft", "add table inet t; add chain inet t c { type filter hook output priority 0; "
                        "ct state new counter; }"], check=True)
        out = subprocess.run([*run, sys.executable, "-c", KERNEL_RECONCILE, str(family), path], capture_output=True,
                             text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "0"]
