"""Node setup at start (svcproxy/runtime/node_setup.py) against kube-proxy 1.36's rules, without
root: the pure planning table-driven (cases from pkg/proxy/conntrack/sysctls_test.go and the
iptables proxier's route_localnet condition), and the writes against a fake /proc and /sys tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from svcproxy.runtime.node_setup import (
    CONNTRACK_MAX_LIMIT,
    HASHSIZE,
    ConntrackSettings,
    NodeSetupError,
    Write,
    apply_oom_score_adj,
    apply_writes,
    conntrack_max,
    conntrack_writes,
    cpu_count,
    init_node,
    nodeport_addresses_contain_ipv4_loopback,
    route_localnet_wanted,
)

NONE = ConntrackSettings(max_per_core=None, min=None, tcp_established_timeout=None, tcp_close_wait_timeout=None)


# TestGetConntrackMax and TestGetConntrackMax_Capped, at 2, 4 and 512 CPUs
@pytest.mark.parametrize(("max_per_core", "minimum", "ncpu", "want"), [
    (0, 0, 4, 0),                                  # nothing set: leave the kernel's value
    (67890, 1, 4, 67890 * 4),                      # maxPerCore used when above min
    (67890, 1, 64, CONNTRACK_MAX_LIMIT),           # ... capped at 1Mi
    (1, 123456, 4, 123456),                        # min is the floor
    (0, 123456, 4, 0),                             # maxPerCore 0: leave the kernel's value, whatever min
    (None, 123456, 4, 0),                          # unset likewise
    (32768, 0, 512, CONNTRACK_MAX_LIMIT),          # 512 cores: 16Mi capped
    (32768, 131072, 2, 131072),                    # kube-proxy's defaults on 2 cores
    (32768, 131072, 8, 262144),                    # ... on 8
    (32768, None, 2, 65536),                       # no min: no floor
    (65536, 4 * CONNTRACK_MAX_LIMIT, 32, CONNTRACK_MAX_LIMIT),  # the cap is checked before min
    (1, 4 * CONNTRACK_MAX_LIMIT, 2, 4 * CONNTRACK_MAX_LIMIT),  # ... so a min above it only counts below it
])
def test_conntrack_max(max_per_core: int | None, minimum: int | None, ncpu: int, want: int) -> None:
    assert conntrack_max(ConntrackSettings(max_per_core=max_per_core, min=minimum), ncpu) == want


def _names(writes: list[Write]) -> list[tuple[str, int]]:
    return [(w.path.rsplit("/", 1)[1], w.value) for w in writes]


# TestSetupConntrack: which setters are called, with what
@pytest.mark.parametrize(("settings", "want"), [
    (NONE, []),
    (ConntrackSettings(max_per_core=12, min=None, tcp_established_timeout=None, tcp_close_wait_timeout=None),
     [("nf_conntrack_max", 48), ("hashsize", 12)]),
    (ConntrackSettings(max_per_core=0, tcp_established_timeout=None, tcp_close_wait_timeout=None), []),
    (ConntrackSettings(max_per_core=0, tcp_established_timeout=5, tcp_close_wait_timeout=None),
     [("nf_conntrack_tcp_timeout_established", 5)]),
    (ConntrackSettings(max_per_core=0, tcp_established_timeout=0, tcp_close_wait_timeout=None), []),
    (ConntrackSettings(max_per_core=0, tcp_established_timeout=None, tcp_close_wait_timeout=5),
     [("nf_conntrack_tcp_timeout_close_wait", 5)]),
    (ConntrackSettings(max_per_core=0, tcp_established_timeout=None, tcp_close_wait_timeout=0), []),
    (ConntrackSettings(max_per_core=0, tcp_established_timeout=None, tcp_close_wait_timeout=None,
                       tcp_be_liberal=True), [("nf_conntrack_tcp_be_liberal", 1)]),
    (ConntrackSettings(max_per_core=0, tcp_established_timeout=None, tcp_close_wait_timeout=None,
                       udp_timeout=5), [("nf_conntrack_udp_timeout", 5)]),
    (ConntrackSettings(max_per_core=0, tcp_established_timeout=None, tcp_close_wait_timeout=None,
                       udp_stream_timeout=5), [("nf_conntrack_udp_timeout_stream", 5)]),
    # Go's int(d / time.Second): 1.9s is 1, and 500ms (> 0, so set) is 0
    (ConntrackSettings(max_per_core=0, tcp_established_timeout=1.9, tcp_close_wait_timeout=0.5),
     [("nf_conntrack_tcp_timeout_established", 1), ("nf_conntrack_tcp_timeout_close_wait", 0)]),
    # kube-proxy's defaults, in its order
    (ConntrackSettings(), [("nf_conntrack_max", 131072), ("hashsize", 32768),
                           ("nf_conntrack_tcp_timeout_established", 86400),
                           ("nf_conntrack_tcp_timeout_close_wait", 3600)]),
    (ConntrackSettings(tcp_be_liberal=True, udp_timeout=30, udp_stream_timeout=120),
     [("nf_conntrack_max", 131072), ("hashsize", 32768), ("nf_conntrack_tcp_timeout_established", 86400),
      ("nf_conntrack_tcp_timeout_close_wait", 3600), ("nf_conntrack_tcp_be_liberal", 1),
      ("nf_conntrack_udp_timeout", 30), ("nf_conntrack_udp_timeout_stream", 120)]),
])
def test_conntrack_writes(settings: ConntrackSettings, want: list[tuple[str, int]]) -> None:
    ncpu = 4 if settings.max_per_core == 12 else 2
    assert _names(conntrack_writes(settings, ncpu)) == want


def test_hashsize_is_a_raise_only_module_parameter() -> None:
    hs = conntrack_writes(ConntrackSettings(), 2)[1]
    assert (hs.path, hs.module, hs.raise_only) == (HASHSIZE, True, True)


@pytest.mark.parametrize(("mode", "families", "localhost", "npa", "node_ips", "want"), [
    ("iptables", (4,), True, (), (), True),                     # the default: every address, loopback too
    ("iptables", (4, 6), True, (), (), True),                   # dual-stack: the IPv4 proxier sets it
    ("iptables", (6,), True, (), (), False),                    # IPv6 alone: no localhost NodePorts
    ("iptables", (4,), False, (), (), False),                   # --iptables-localhost-nodeports=false
    ("nftables", (4,), True, (), (), False),                    # nftables has no localhost NodePorts
    ("userspace", (4,), True, (), (), False),
    ("iptables", (4,), True, ("127.0.0.0/8",), (), True),
    ("iptables", (4,), True, ("127.0.0.1/32",), (), True),
    ("iptables", (4,), True, ("0.0.0.0/0",), (), True),
    ("iptables", (4,), True, ("10.0.0.0/8",), (), False),       # loopback filtered out
    ("iptables", (4,), True, ("10.0.0.0/8", "127.0.0.0/16"), (), True),
    ("iptables", (4,), True, ("fd00::/64",), (), True),         # no IPv4 CIDR: 0.0.0.0/0 for IPv4
    ("iptables", (4,), True, ("primary",), ("192.168.0.2",), False),  # primary: the node IP/32
    ("iptables", (4,), True, ("primary",), ("fd00::2",), True),  # ... no IPv4 node IP: 0.0.0.0/0
    ("iptables", (4,), True, ("primary",), ("127.0.0.1",), True),  # a loopback node IP is dropped
])
def test_route_localnet_wanted(mode: str, families: tuple[int, ...], localhost: bool, npa: tuple[str, ...],
                               node_ips: tuple[str, ...], want: bool) -> None:
    assert route_localnet_wanted(mode, families, localhost, npa, node_ips) is want


def test_loopback_check_matches_kube_proxy_for_cidrs_around_127() -> None:
    assert nodeport_addresses_contain_ipv4_loopback(["0.0.0.0/1"], [])       # contains 127.0.0.0
    assert not nodeport_addresses_contain_ipv4_loopback(["128.0.0.0/1"], [])


def fake_tree(tmp_path: Path, values: dict[str, int]) -> tuple[Path, Path]:
    """A proc and sys root holding the given files ('proc/...' or 'sys/...')."""
    for rel, value in values.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{value}\n")
    return tmp_path / "proc", tmp_path / "sys"


NF = "proc/sys/net/netfilter/"


def read(tmp_path: Path, rel: str) -> int:
    return int((tmp_path / rel).read_text())


def test_init_node_writes_what_differs_and_raises_hashsize_only(tmp_path: Path) -> None:
    proc, sys_root = fake_tree(tmp_path, {
        NF + "nf_conntrack_max": 262144, "sys/" + HASHSIZE: 16384,
        NF + "nf_conntrack_tcp_timeout_established": 432000, NF + "nf_conntrack_tcp_timeout_close_wait": 3600,
        NF + "nf_conntrack_tcp_be_liberal": 0, "proc/sys/net/ipv4/conf/all/route_localnet": 0})
    lines = init_node("iptables", (4,), ConntrackSettings(), ncpu=2, proc=proc, sys=sys_root)
    # nf_conntrack_max is set even when that lowers it (kube-proxy does); hashsize only raised
    assert read(tmp_path, NF + "nf_conntrack_max") == 131072
    assert read(tmp_path, "sys/" + HASHSIZE) == 32768
    assert read(tmp_path, NF + "nf_conntrack_tcp_timeout_established") == 86400
    assert read(tmp_path, "proc/sys/net/ipv4/conf/all/route_localnet") == 1
    assert lines == ["set net.netfilter.nf_conntrack_max to 131072 (was 262144)",
                     f"set conntrack hashsize ({sys_root / HASHSIZE}) to 32768 (was 16384)",
                     "set net.netfilter.nf_conntrack_tcp_timeout_established to 86400 (was 432000)",
                     "set net.ipv4.conf.all.route_localnet to 1 (was 0)"]
    # a second start changes nothing; a larger hashsize stays
    (tmp_path / "sys" / HASHSIZE).write_text("65536")
    assert init_node("iptables", (4,), ConntrackSettings(), ncpu=2, proc=proc, sys=sys_root) == [
        "net.ipv4.conf.all.route_localnet already 1 (NodePorts answer on 127.0.0.1)"]
    assert read(tmp_path, "sys/" + HASHSIZE) == 65536


def test_init_node_modes(tmp_path: Path) -> None:
    proc, sys_root = fake_tree(tmp_path, {"proc/sys/net/ipv4/conf/all/route_localnet": 0})
    assert init_node("nftables", (4,), None, proc=proc, sys=sys_root) == []
    assert init_node("iptables", (4,), None, localhost_nodeports=False, proc=proc, sys=sys_root) == []
    assert init_node("userspace", (4,), ConntrackSettings(), proc=proc, sys=sys_root) == [
        "userspace mode: no conntrack sysctls or route_localnet needed"]
    assert read(tmp_path, "proc/sys/net/ipv4/conf/all/route_localnet") == 0
    assert init_node("nftables", (4,), NONE, proc=proc, sys=sys_root) == [
        "conntrack settings: every kernel value left as it is"]


def test_missing_sysctl_is_fatal_and_names_the_setting(tmp_path: Path) -> None:
    proc, sys_root = fake_tree(tmp_path, {"proc/sys/net/ipv4/conf/all/route_localnet": 0})
    settings = ConntrackSettings(max_per_core=0, tcp_close_wait_timeout=None)  # established only
    with pytest.raises(NodeSetupError) as e:
        init_node("nftables", (4,), settings, proc=proc, sys=sys_root)
    assert e.value.setting.startswith("conntrack.tcpEstablishedTimeout")
    assert str(e.value).startswith("could not set conntrack parameters from kube-proxy configuration: open ")
    assert "nf_conntrack_tcp_timeout_established: no such file or directory" in str(e.value)
    assert "--conntrack-tcp-timeout-established" in str(e.value)


def test_unreadable_hashsize_is_fatal(tmp_path: Path) -> None:
    proc, sys_root = fake_tree(tmp_path, {NF + "nf_conntrack_max": 1})
    with pytest.raises(NodeSetupError, match=r"cannot read .*hashsize \(conntrack.maxPerCore"):
        init_node("iptables", (4,), ConntrackSettings(tcp_established_timeout=None, tcp_close_wait_timeout=None),
                  localhost_nodeports=False, ncpu=2, proc=proc, sys=sys_root)


def test_route_localnet_failure_says_how_to_avoid_it(tmp_path: Path) -> None:
    proc, sys_root = fake_tree(tmp_path, {})
    (proc / "sys/net/ipv4/conf/all/route_localnet").mkdir(parents=True)  # unwritable as a file
    with pytest.raises(NodeSetupError) as e:
        init_node("iptables", (4, 6), None, proc=proc, sys=sys_root)
    assert str(e.value).startswith("unable to create proxier: can't set sysctl net/ipv4/conf/all/route_localnet "
                                   "to 1: open ")
    assert e.value.setting == "iptables.localhostNodePorts (--iptables-localhost-nodeports)"


def test_apply_writes_returns_nothing_when_all_match(tmp_path: Path) -> None:
    proc, sys_root = fake_tree(tmp_path, {NF + "nf_conntrack_udp_timeout": 30})
    assert apply_writes([Write("net/netfilter/nf_conntrack_udp_timeout", 30, "x")], proc, sys_root) == []


@pytest.mark.parametrize(("text", "want"), [("0-1", 2), ("0-3,8-11", 8), ("0", 1), ("0,2,4-5", 4)])
def test_cpu_count_reads_the_online_list(tmp_path: Path, text: str, want: int) -> None:
    (tmp_path / "devices/system/cpu").mkdir(parents=True)
    (tmp_path / "devices/system/cpu/online").write_text(text + "\n")
    assert cpu_count(tmp_path) == want


def test_cpu_count_falls_back_without_sys(tmp_path: Path) -> None:
    assert cpu_count(tmp_path) >= 1


def test_oom_score_adj(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    (tmp_path / "self/oom_score_adj").write_text("0\n")
    assert apply_oom_score_adj(-999, tmp_path) == "set oom_score_adj to -999"
    assert (tmp_path / "self/oom_score_adj").read_text() == "-999"
    assert apply_oom_score_adj(None, tmp_path) is None
    with pytest.raises(ValueError, match=r"oomScoreAdj \(--oom-score-adj\): must be within the range"):
        apply_oom_score_adj(1001, tmp_path)
    # a failure is only logged, as kube-proxy does
    assert apply_oom_score_adj(-999, tmp_path / "missing") is None


def test_oom_score_adj_on_a_real_process() -> None:
    """In a child process (not the test runner's own score): the kernel takes a raise; lowering
    needs CAP_SYS_RESOURCE, and without it the refusal is only logged (the process goes on)."""
    code = ("from svcproxy.runtime.node_setup import apply_oom_score_adj as a; print(a(500)); print(a(-999)); "
            "print(open('/proc/self/oom_score_adj').read().strip())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "set oom_score_adj to 500"
    assert (out[1], out[2]) in (("set oom_score_adj to -999", "-999"), ("None", "500"))
