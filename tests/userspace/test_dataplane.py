"""UserspaceDataplane in one network namespace: listeners, changes under load, UDP sessions,
refusal, cleanup. The namespace's own processes do the work (node_script.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel
NS = "usp-dp"
SCRIPT = Path(__file__).with_name("node_script.py")


def sh(*argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.fixture(scope="module")
def observed() -> Iterator[dict]:
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespaces)")
    subprocess.run(["ip", "netns", "delete", NS], capture_output=True)
    sh("ip", "netns", "add", NS)
    try:
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        for ip in ("10.9.0.1", "10.0.1.10", "10.0.1.11", "10.0.1.12"):
            sh("ip", "-n", NS, "addr", "add", f"{ip}/32", "dev", "lo")
        out = subprocess.run(["ip", "netns", "exec", NS, sys.executable, str(SCRIPT)], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(out.stdout.splitlines()[-1])
        result["links"] = sh("ip", "-n", NS, "link")
        result["nft"] = sh("ip", "netns", "exec", NS, "nft", "list", "ruleset")
        yield result
    finally:
        subprocess.run(["ip", "netns", "delete", NS], capture_output=True)


def test_listens_on_cluster_ip_and_node_ports(observed):
    assert observed["listening"] == [["TCP", "0.0.0.0", 30080], ["TCP", "172.30.1.10", 80],
                                     ["TCP", "172.30.1.10", 81], ["UDP", "0.0.0.0", 30053],
                                     ["UDP", "172.30.1.10", 53]]
    assert observed["spread"] == ["10.0.1.10", "10.0.1.10", "10.0.1.11", "10.0.1.11"]
    assert observed["nodeport_tcp"] in ("10.0.1.10", "10.0.1.11")


def test_closed_connections_release_their_sockets(observed):
    assert observed["fds_gained_after_300"] < 10, observed["fds_gained_after_300"]


def test_wildcard_udp_node_port_replies_from_the_address_written_to(observed):
    (ep1, src1), (ep2, src2) = observed["nodeport_udp"]
    assert {ep1, ep2} <= {"10.0.1.10", "10.0.1.11"}
    assert (src1, src2) == ("127.0.0.1", "10.9.0.1")


def test_changes_under_load_keep_established_connections(observed):
    assert observed["failures_during_syncs"] == []
    first = observed["kept_after_change"][0]
    assert observed["kept_after_change"] == [first] * 3
    assert observed["after_change"] == observed["expected_after_change"]


def test_udp_session_follows_a_removed_endpoint(observed):
    before, after = observed["udp_session"]
    assert before != "10.0.1.12" and after == "10.0.1.12"


def test_no_endpoints_refuses_at_once_and_established_stay(observed):
    assert observed["empty_tcp"] == "ConnectionRefusedError"
    assert observed["empty_ms"] < 100
    assert observed["kept_after_empty"] == observed["kept_after_change"][0]


def test_full_sync_repairs_a_removed_address(observed):
    assert observed["repaired"] in ("10.0.1.10", "10.0.1.11", "10.0.1.12")


def test_port_held_by_another_program_is_named_once_and_retried(observed):
    # TCP 0.0.0.0:30081 was taken: everything else listens; the error is logged once over the
    # syncs that follow, and the listener opens at the first sync after the port is free
    assert len(observed["busy_logs"]) == 1, observed["busy_logs"]
    assert "t/web:busy: cannot listen on TCP 0.0.0.0:30081 (nodeport)" in observed["busy_logs"][0]
    assert observed["busy_after_release"] is True


def test_sctp_reported_once(observed):
    assert len(observed["sctp_logs"]) == 1, observed["sctp_logs"]
    assert "t/web:sig" in observed["sctp_logs"][0]


def test_cleanup_closes_listeners_and_removes_interface(observed):
    assert observed["listening_after_cleanup"] == []
    assert observed["nodeport_after_cleanup"] == "ConnectionRefusedError"
    assert "svcproxy0" not in observed["links"]
    assert observed["nft"].strip() == ""


def test_ipv6():
    ns = NS + "6"
    subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        for ip in ("fd00:9::1", "fd00:1::10"):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/128", "dev", "lo", "nodad")
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(SCRIPT), "ipv6"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-3000:]
        got = json.loads(out.stdout.splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
    assert got["listening"] == [["TCP", "::", 30080], ["TCP", "fd00:30::10", 80], ["UDP", "::", 30053],
                                ["UDP", "fd00:30::10", 53]]
    assert got["cluster_tcp"] == got["nodeport_tcp"] == "fd00:1::10"
    assert got["nodeport_udp"] == ["fd00:1::10", "fd00:9::1"]
