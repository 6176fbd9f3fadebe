"""ebpf mode on a real kernel: connect() to a Service from a process in the cgroup reaches an
endpoint directly (no NAT), UDP replies come from the Service address, no endpoints refuses."""

from __future__ import annotations

from collections import Counter

import pytest

from .conftest import ENDPOINTS, TCP_PORT, UDP_PORT, Node
from .helpers import VIP, service, state_of

pytestmark = pytest.mark.kernel


def test_tcp_to_a_cluster_ip_spreads_over_the_endpoints_without_nat(inside: Node) -> None:
    dp = inside.dataplane()
    dp.sync(state_of(service("web", VIP, ENDPOINTS)))
    got = inside.client("tcp", VIP, 80, 150)
    served = Counter(r.get("served", r.get("error")) for r in got)
    assert set(served) == set(ENDPOINTS), served
    assert min(served.values()) >= 20, served  # 1/3 each of 150: 50 +- a lot, never under 20
    assert all(r["peer"] == [VIP, 80] for r in got)  # getpeername: the Service address
    conntrack = inside.run("conntrack", "-L", "-p", "tcp", check=False).stdout
    assert VIP not in conntrack  # the packets carried the endpoint's address: nothing to NAT
    counts = dp.endpoint_counts()
    assert sum(counts.values()) == 150
    assert {ip for (_, ip, port) in counts if port == TCP_PORT} == set(ENDPOINTS)


def test_udp_reply_comes_from_the_service_address(inside: Node) -> None:
    dp = inside.dataplane()
    dp.sync(state_of(service("dns", VIP, ENDPOINTS, port=53, target=UDP_PORT, protocol="UDP")))
    got = inside.client("udp", VIP, 53, 30)
    assert {r["served"] for r in got} <= set(ENDPOINTS) and len({r["served"] for r in got}) > 1
    assert all(r["source"] == [VIP, 53] for r in got), got
    connected = inside.client("udpc", VIP, 53, 5)
    assert all(r["source"] == [VIP, 53] and r["peer"] == [VIP, 53] for r in connected), connected


def test_no_endpoints_refuses_the_connection(inside: Node) -> None:
    dp = inside.dataplane()
    dp.sync(state_of(service("empty", VIP, []), service("dns", "172.30.0.11", [], port=53, protocol="UDP")))
    assert inside.client("tcp", VIP, 80, 3) == [{"error": "ECONNREFUSED"}] * 3
    assert inside.client("udp", "172.30.0.11", 53, 1) == [{"error": "ECONNREFUSED"}]


def test_a_process_outside_the_cgroup_is_served_by_nftables(inside: Node) -> None:
    dp = inside.dataplane()
    dp.sync(state_of(service("web", VIP, ENDPOINTS)))
    got = inside.client("tcp", VIP, 80, 20, in_cgroup=False)
    assert {r.get("served") for r in got} <= set(ENDPOINTS), got
    conntrack = inside.run("conntrack", "-L", "-p", "tcp", "-d", VIP).stdout
    assert "dport=80" in conntrack  # DNAT by the nftables maps layout: it has a NAT entry


def test_the_pinned_maps_explain_the_choice_and_count_connections(inside: Node) -> None:
    from svcproxy.dataplane.ebpf import inspect

    from .conftest import CFG

    state = state_of(service("web", VIP, ENDPOINTS), service("empty", "172.30.0.11", []))
    dp = inside.dataplane()
    dp.sync(state)
    choice = inspect.choice_from_pins(VIP, 80, "TCP", inside.pins)
    assert choice is not None and choice.verdict == "rewrite"
    assert [e for e, _ in choice.endpoints] == [f"{ip}:{TCP_PORT}" for ip in ENDPOINTS]
    assert all(abs(p - 1 / 3) < 1e-9 for _, p in choice.endpoints)
    assert choice == inspect.choice_from_state(state, CFG, VIP, 80, "TCP")  # the state says the same
    assert inspect.choice_from_pins("172.30.0.11", 80, "TCP", inside.pins).verdict == "reject"  # type: ignore[union-attr]
    assert inspect.choice_from_pins("172.30.0.99", 80, "TCP", inside.pins) is None
    inside.client("tcp", VIP, 80, 12)
    counts = inspect.connections_from_pins(inside.pins)
    assert sum(counts.values()) == 12 and {k[2] for k in counts} == {"TCP"}


def test_node_port_and_external_ip_from_a_local_client_need_no_nat(inside: Node) -> None:
    from .conftest import NODE_IP

    dp = inside.dataplane()
    dp.sync(state_of(service("web", VIP, ENDPOINTS, node_port=30080, external_ips=("192.0.2.10",))))
    for ip, port in ((NODE_IP, 30080), ("192.0.2.10", 80)):
        got = inside.client("tcp", ip, port, 15)
        assert {r.get("served") for r in got} == set(ENDPOINTS), (ip, got)
        assert all(r["peer"] == [ip, port] for r in got)
    assert "dport=30080" not in inside.run("conntrack", "-L", "-p", "tcp", check=False).stdout


def test_internal_local_uses_the_local_endpoint_and_without_one_nftables_drops(inside: Node) -> None:
    dp = inside.dataplane()
    dp.sync(state_of(service("web", VIP, ENDPOINTS, internal_policy_local=True, local=(ENDPOINTS[1],))))
    assert {r.get("served") for r in inside.client("tcp", VIP, 80, 10)} == {ENDPOINTS[1]}
    dp.sync(state_of(service("web", VIP, ENDPOINTS, internal_policy_local=True)), changed={"ns1/web"})
    # endpoints elsewhere, none here: the hook leaves the address alone and nftables drops the
    # SYN, as kube-proxy does (not a REJECT: the client waits out its 3 s timeout)
    assert inside.client("tcp", VIP, 80, 1) == [{"error": "timed out"}]


def test_trace_reads_the_socket_choice_from_a_running_nodes_pins(inside: Node) -> None:
    """`svcproxy trace --rules` on a node in ebpf mode: the connect() step from the pinned maps,
    then the rules; no masquerade, each endpoint 1/3; a source from elsewhere meets nftables."""
    import json

    from click.testing import CliRunner

    from svcproxy.cli.trace import trace

    from .conftest import NODE_IP

    inside.dataplane().sync(state_of(service("web", VIP, ENDPOINTS), service("empty", "172.30.0.11", [])))
    rules = inside.run("nft", "list", "ruleset").stdout
    args = ["--rules", "-", "--proxy-mode", "ebpf", "--node-ip", NODE_IP, "--bpf-pins", str(inside.pins),
            "--destination", VIP, "--port", "80", "--output", "json"]
    local = json.loads(CliRunner().invoke(trace, [*args, "--source", NODE_IP], input=rules).stdout)
    assert local["path"][:2] == ["connect() (BPF)", "bpf/cgroup/connect4"]
    assert [(o["endpoint"], o["masquerade"]) for o in local["outcomes"]] == [
        (f"{ip}:{TCP_PORT}", False) for ip in ENDPOINTS]
    assert all(abs(o["probability"] - 1 / 3) < 1e-9 for o in local["outcomes"])
    refused = json.loads(CliRunner().invoke(trace, [*args[:-6], "--destination", "172.30.0.11", "--port", "80",
                                                    "--output", "json", "--source", NODE_IP], input=rules).stdout)
    assert refused["verdict"] == "REJECT" and refused["path"][-1].endswith("ECONNREFUSED")
    outside = json.loads(CliRunner().invoke(trace, [*args, "--source", "203.0.113.9"], input=rules).stdout)
    assert "connect() (BPF)" not in outside["path"] and outside["verdict"] == "ACCEPT"
    assert outside["endpoints"] == sorted(f"{ip}:{TCP_PORT}" for ip in ENDPOINTS)  # DNAT by nftables
