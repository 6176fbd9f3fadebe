"""kube-proxy ipvs mode's leftovers (svcproxy/dataplane/iptables/ipvs_leftovers.py): what is
kube-proxy's is found by its exact names and rules, and removed on the one cleanup path
(cleanup_other_modes, `svcproxy cleanup`), in a namespace made for the test, where a foreign
chain, ipset and link stay."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from svcproxy.dataplane.iptables.ipvs_leftovers import (
    VirtualService,
    dummy_addresses,
    ipsets_to_destroy,
    ipvs_ipset_names,
    parse_ip_vs,
    services_on,
)

from .conftest import saved, sh

ROOT = Path(__file__).resolve().parents[2]

IP_VS = """IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  AC1E000A:0050 rr
  -> 0A00010A:1F90      Masq    1      0          0
UDP  AC1E0035:0035 rr
TCP  C0A80002:7594 rr
TCP  [fd00:0010:0000:0000:0000:0000:0000:000a]:0050 rr
FWM  00000001 rr
SCTP AC1E000B:0BB8 sh
"""


def test_parse_ip_vs() -> None:
    assert parse_ip_vs(IP_VS) == [VirtualService("TCP", "172.30.0.10", 80), VirtualService("UDP", "172.30.0.53", 53),
                                  VirtualService("TCP", "192.168.0.2", 30100), VirtualService("TCP", "fd00:10::a", 80),
                                  VirtualService("SCTP", "172.30.0.11", 3000)]


def test_only_virtual_services_on_kube_ipvs0_addresses_are_kube_proxys() -> None:
    services = parse_ip_vs(IP_VS)
    # the NodePort one on the node IP (192.168.0.2) cannot be told from anyone else's: it stays
    got = services_on(services, ["172.30.0.10", "172.30.0.53", "fd00:10:0::a"])
    assert [s.ipvsadm_args for s in got] == [["-D", "-t", "172.30.0.10:80"], ["-D", "-u", "172.30.0.53:53"],
                                             ["-D", "-t", "[fd00:10::a]:80"]]


def test_ipset_names() -> None:
    names = ipvs_ipset_names()
    assert len(names) == 34 and "KUBE-6-CLUSTER-IP" in names and "KUBE-6-IPVS-IPS" in names
    assert ipsets_to_destroy(["MY-SET", "KUBE-MY-OWN", "KUBE-IPVS-IPS", "KUBE-CLUSTER-IP", "KUBE-6-LOOP-BACK"]) == [
        "KUBE-CLUSTER-IP", "KUBE-IPVS-IPS", "KUBE-6-LOOP-BACK"]


def test_only_a_dummy_kube_ipvs0_is_kube_proxys() -> None:
    dummy = [{"ifname": "kube-ipvs0", "linkinfo": {"info_kind": "dummy"},
              "addr_info": [{"family": "inet", "local": "172.30.0.10"}, {"family": "inet6", "local": "fd00:10::a"}]}]
    assert dummy_addresses(dummy) == (["172.30.0.10", "fd00:10::a"], "")
    assert dummy_addresses([]) == (None, "")
    addresses, why = dummy_addresses([{"ifname": "kube-ipvs0", "linkinfo": {"info_kind": "bridge"}}])
    assert addresses is None and "expect dummy device, got device type: bridge (left in place)" in why


def dummy_links_work(ns: str) -> bool:
    """Some kernels are built without the dummy driver (kube-proxy's ipvs mode cannot run there)."""
    made = subprocess.run(["ip", "-n", ns, "link", "add", "probe0", "type", "dummy"], capture_output=True)
    subprocess.run(["ip", "-n", ns, "link", "delete", "probe0"], capture_output=True)
    return made.returncode == 0


NAT = """*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
:MY-NAT - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -j MY-NAT
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER
-A KUBE-NODE-PORT -p tcp -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
-A KUBE-POSTROUTING -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A MY-NAT -m set --match-set MY-SET src -j MASQUERADE
COMMIT
"""
FILTER = """*filter
:KUBE-FORWARD - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SOURCE-RANGES-FIREWALL - [0:0]
:KUBE-IPVS-FILTER - [0:0]
:KUBE-IPVS-OUT-FILTER - [0:0]
:MY-CHAIN - [0:0]
-A INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT
-A INPUT -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A INPUT -j MY-CHAIN
-A FORWARD -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A OUTPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER
-A KUBE-PROXY-FIREWALL -j KUBE-SOURCE-RANGES-FIREWALL
-A KUBE-IPVS-FILTER -m set --match-set KUBE-IPVS-IPS dst -j REJECT
-A KUBE-IPVS-OUT-FILTER -m set --match-set KUBE-IPVS-IPS dst -j REJECT
-A MY-CHAIN -m set --match-set MY-SET src -j ACCEPT
COMMIT
"""
FILTER6 = """*filter
:KUBE-IPVS-FILTER - [0:0]
:MY-CHAIN - [0:0]
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A INPUT -j MY-CHAIN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-6-IPVS-IPS dst -j REJECT
COMMIT
"""
IPSETS = ["KUBE-CLUSTER-IP hash:ip,port", "KUBE-LOAD-BALANCER hash:ip,port", "KUBE-NODE-PORT-TCP bitmap:port range 0-65535",
          "KUBE-LOOP-BACK hash:ip,port,ip", "KUBE-IPVS-IPS hash:ip", "KUBE-6-IPVS-IPS hash:ip family inet6",
          "KUBE-6-CLUSTER-IP hash:ip,port family inet6", "MY-SET hash:ip", "KUBE-MY-OWN hash:ip"]


def leave_ipvs_mode_behind(ns: str) -> None:
    """What kube-proxy's ipvs mode leaves on a node it ran on, beside other software's objects
    (the links only where the kernel has dummy links; foreign0 is then a dummy too)."""
    if dummy_links_work(ns):
        for link in ("kube-ipvs0", "foreign0"):
            sh(ns, "ip", "link", "add", link, "type", "dummy")
        sh(ns, "ip", "addr", "add", "172.30.0.10/32", "dev", "kube-ipvs0")
    for spec in IPSETS:
        sh(ns, "ipset", "create", *spec.split())
    sh(ns, "iptables-restore", "--noflush", input=NAT + FILTER)
    sh(ns, "ip6tables-restore", "--noflush", input=FILTER6)


def links(ns: str) -> set[str]:
    return {line.split(":")[1].strip().split("@")[0] for line in sh(ns, "ip", "-o", "link").splitlines()}


def ipsets(ns: str) -> set[str]:
    return set(sh(ns, "ipset", "list", "-n").split())


def assert_only_foreign_left(ns: str, had_links: bool) -> None:
    assert "kube-ipvs0" not in links(ns)
    assert ("foreign0" in links(ns)) is had_links
    assert ipsets(ns) == {"MY-SET", "KUBE-MY-OWN"}
    for table, family in (("nat", 4), ("filter", 4), ("filter", 6)):
        text = saved(ns, table, family)
        assert "KUBE-" not in text, text
        assert "MY-" in text
    assert "-A INPUT -j MY-CHAIN" in saved(ns, "filter") and "-A POSTROUTING -j MY-NAT" in saved(ns, "nat")


def run_in(ns: str, code: str) -> str:
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return p.stdout + p.stderr


needs_ipset = pytest.mark.skipif(shutil.which("ipset") is None, reason="needs the ipset tool (scripts/setup.sh)")
CLEANUP = ("import logging; logging.basicConfig(level=logging.INFO); from svcproxy.config import NodeConfig; "
           "from svcproxy.dataplane import cleanup_other_modes; cleanup_other_modes({mode!r}, NodeConfig())")


@pytest.mark.kernel
@needs_ipset
@pytest.mark.parametrize("mode", ["nftables", "userspace"])
def test_starting_another_mode_removes_ipvs_leftovers(netns: str, mode: str) -> None:
    leave_ipvs_mode_behind(netns)
    had_links = "kube-ipvs0" in links(netns)
    out = run_in(netns, CLEANUP.format(mode=mode))
    assert_only_foreign_left(netns, had_links)
    assert ("deleted ipvs mode's dummy interface kube-ipvs0" in out) is had_links
    assert "destroyed ipvs mode's ipset KUBE-6-IPVS-IPS" in out
    assert "IPv6: deleted ipvs mode's chain filter/KUBE-IPVS-FILTER" in out
    assert "WARNING" not in out, out


@pytest.mark.kernel
@needs_ipset
def test_iptables_mode_leaves_them_as_kube_proxy_does(netns: str) -> None:
    """ipvs mode's chains are iptables mode's names: kube-proxy removes neither while iptables runs."""
    leave_ipvs_mode_behind(netns)
    before = (links(netns), ipsets(netns), saved(netns, "filter"), saved(netns, "nat"))
    run_in(netns, CLEANUP.format(mode="iptables"))
    assert (links(netns), ipsets(netns), saved(netns, "filter"), saved(netns, "nat")) == before


@pytest.mark.kernel
@needs_ipset
def test_svcproxy_cleanup_removes_them(netns: str) -> None:
    leave_ipvs_mode_behind(netns)
    had_links = "kube-ipvs0" in links(netns)
    p = subprocess.run(["ip", "netns", "exec", netns, str(Path(sys.executable).with_name("svcproxy")), "cleanup"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert_only_foreign_left(netns, had_links)
    # and again: nothing left to remove is fine
    p = subprocess.run(["ip", "netns", "exec", netns, str(Path(sys.executable).with_name("svcproxy")), "cleanup"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr


@pytest.mark.kernel
@needs_ipset
def test_a_kube_ipvs0_that_is_not_a_dummy_stays(netns: str) -> None:
    sh(netns, "ip", "link", "add", "kube-ipvs0", "type", "bridge")
    from svcproxy.dataplane.iptables import IptablesDataplane
    from svcproxy.dataplane.protocol import ApplyError

    from .conftest import NODE
    with pytest.raises(ApplyError, match="expect dummy device, got device type: bridge"):
        IptablesDataplane(NODE, netns=netns).cleanup()
    assert "kube-ipvs0" in links(netns)
