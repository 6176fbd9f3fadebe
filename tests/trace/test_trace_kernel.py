"""The tracer against the real kernel, inside network namespaces this test creates and removes.

1. Rulesets read back from the kernel (iptables-save, `nft list ruleset`, `nft -j list ruleset`)
   trace exactly like the text that was loaded.
2. Traces agree with real TCP/UDP traffic through a node namespace: same endpoints, same
   masquerading, same verdict (refused / timed out).

Topology: trc-c (client 10.0.1.5 and 192.168.0.1) -- trc-n (the node: 10.0.1.1 and 192.168.0.2
towards the client, 10.0.2.1 towards the pods) -- trc-s (pods 10.0.2.10, 10.0.2.11; the servers
answer with the address they were reached on and the peer they saw, so masquerading shows).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from svcproxy.config import NodeConfig
from svcproxy.dataplane import renderer
from svcproxy.model.load import load_paths
from svcproxy.netfilter import trace_packet
from svcproxy.state import build_state

pytestmark = pytest.mark.kernel
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "cluster"
CFG = NodeConfig(hostname="test-node", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/16",))
SUFFIX = f"{os.getpid() % 100000}"


def sh(*argv: str, input: str | None = None, check: bool = True) -> str:
    p = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {p.stderr.strip()}")
    return p.stdout


def nsexec(ns: str, *argv: str, input: str | None = None) -> str:
    return sh("ip", "netns", "exec", ns, *argv, input=input)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"trc-k{SUFFIX}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def _rendered(mode: str, cfg: NodeConfig = CFG) -> str:
    return renderer(mode)(build_state(load_paths([EXAMPLES]), cfg), cfg)


SCENARIOS = [("10.0.1.99", "172.30.0.10", 80, "TCP"), ("192.168.0.2", "172.30.0.30", 80, "TCP"),
             ("192.168.0.1", "192.168.0.2", 30080, "TCP"), ("10.0.1.99", "172.30.0.53", 53, "UDP"),
             ("203.0.113.9", "192.168.100.40", 80, "TCP"), ("10.0.1.99", "172.30.0.50", 80, "TCP")]


def _rounded(r) -> list[tuple[float, str, str, bool]]:
    return [(round(o.probability, 6), o.verdict, o.endpoint, o.masquerade) for o in r.outcomes]


def _same_traces(a: str, b: str) -> None:
    for s in SCENARIOS:
        ra = trace_packet(a, *s, local_addresses=["192.168.0.2"])
        rb = trace_packet(b, *s, local_addresses=["192.168.0.2"])
        assert _rounded(ra) == _rounded(rb), s  # the kernel keeps probabilities as 32-bit fractions
        assert ra.warnings == rb.warnings == [], s


@pytest.mark.parametrize("layout", ["kube-proxy", "maps"])
def test_nft_text_and_json_from_the_kernel(netns: str, layout: str) -> None:
    text = _rendered("nftables", replace(CFG, nftables_layout=layout))
    if layout == "maps":  # the endpoints are ranges of the shared maps, read back as such
        assert "offset" in text and "map @endpoints-tcp-" in text
    nsexec(netns, "nft", "-f", "-", input=text)
    listed = nsexec(netns, "nft", "list", "ruleset")
    as_json = nsexec(netns, "nft", "-j", "list", "ruleset")
    assert json.loads(as_json)["nftables"]
    _same_traces(text, listed)
    _same_traces(text, as_json)


def test_iptables_save_from_the_kernel(netns: str) -> None:
    text = _rendered("iptables")
    nsexec(netns, "iptables-restore", "--noflush", input=text)
    saved = nsexec(netns, "iptables-save")
    assert "-A KUBE-SERVICES" in saved
    _same_traces(text, saved)


# -- agreement with real traffic --------------------------------------------------------------------

IPT_RULES = """*nat
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SVC-WEB - [0:0]
:KUBE-SVC-DNS - [0:0]
:KUBE-SEP-A - [0:0]
:KUBE-SEP-B - [0:0]
:KUBE-SEP-D - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j KUBE-SERVICES
-A POSTROUTING -j KUBE-POSTROUTING
-A KUBE-SERVICES -d 172.30.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-WEB
-A KUBE-SERVICES -d 172.30.0.53/32 -p udp -m udp --dport 53 -j KUBE-SVC-DNS
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30080 -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30080 -j KUBE-SVC-WEB
-A KUBE-SVC-WEB ! -s 10.0.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SVC-WEB -m statistic --mode random --probability 0.5 -j KUBE-SEP-A
-A KUBE-SVC-WEB -j KUBE-SEP-B
-A KUBE-SVC-DNS -j KUBE-SEP-D
-A KUBE-SEP-A -p tcp -j DNAT --to-destination 10.0.2.10:8080
-A KUBE-SEP-B -p tcp -j DNAT --to-destination 10.0.2.11:8080
-A KUBE-SEP-D -p udp -j DNAT --to-destination 10.0.2.11:5353
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -j MASQUERADE
COMMIT
*filter
:KUBE-SERVICES - [0:0]
-A FORWARD -m conntrack --ctstate NEW -j KUBE-SERVICES
-A KUBE-SERVICES -d 172.30.0.50/32 -p tcp -m tcp --dport 80 -j REJECT
-A KUBE-SERVICES -d 172.30.0.60/32 -p tcp -m tcp --dport 80 -j DROP
COMMIT
"""

NFT_RULES = """table ip trc {
	map services {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 172.30.0.10 . tcp . 80 : goto svc-web, 172.30.0.53 . udp . 53 : goto svc-dns }
	}
	chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }
	chain nat-output { type nat hook output priority -100; policy accept; jump services; }
	chain nat-postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		mark and 0x4000 == 0 return
		mark set mark xor 0x4000
		masquerade
	}
	chain filter-forward {
		type filter hook forward priority filter; policy accept;
		ip daddr 172.30.0.50 tcp dport 80 reject
		ip daddr 172.30.0.60 tcp dport 80 drop
	}
	chain services {
		ip daddr . meta l4proto . th dport vmap @services
		fib daddr type local tcp dport 30080 mark set mark or 0x4000 goto svc-web
	}
	chain svc-web {
		ip saddr != 10.0.0.0/16 mark set mark or 0x4000
		numgen random mod 2 vmap { 0 : goto ep-a, 1 : goto ep-b }
	}
	chain svc-dns { meta l4proto udp dnat to 10.0.2.11:5353; }
	chain ep-a { meta l4proto tcp dnat to 10.0.2.10:8080; }
	chain ep-b { meta l4proto tcp dnat to 10.0.2.11:8080; }
}
"""

SERVER = r"""
import socket, sys, threading
def tcp(ip, port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((ip, port)); s.listen(64)
    while True:
        c, peer = s.accept(); c.sendall(f"{ip}:{port} {peer[0]}".encode()); c.close()
def udp(ip, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((ip, port))
    while True:
        data, peer = s.recvfrom(100); s.sendto(f"{ip}:{port} {peer[0]}".encode(), peer)
for ip in ("10.0.2.10", "10.0.2.11"):
    threading.Thread(target=tcp, args=(ip, 8080), daemon=True).start()
threading.Thread(target=udp, args=("10.0.2.11", 5353), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = r"""
import json, socket, sys
dst, port, proto, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
seen = {}
for _ in range(n):
    try:
        if proto == "TCP":
            s = socket.create_connection((dst, port), timeout=0.5); got = s.recv(100).decode(); s.close()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)
            s.sendto(b"x", (dst, port)); got = s.recvfrom(100)[0].decode(); s.close()
    except (TimeoutError, socket.timeout):
        got = "TIMEOUT"
    except OSError:  # refused, or an ICMP error: the packet was rejected
        got = "REFUSED"
    seen[got] = seen.get(got, 0) + 1
print(json.dumps(seen))
"""


@pytest.fixture
def topology() -> Iterator[dict[str, str]]:
    c, n, s = f"trc-c{SUFFIX}", f"trc-n{SUFFIX}", f"trc-s{SUFFIX}"
    server = None
    try:
        for ns in (c, n, s):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", f"trc{SUFFIX}a", "netns", c, "type", "veth", "peer", "name", "trc-nc", "netns", n)
        sh("ip", "link", "add", f"trc{SUFFIX}b", "netns", s, "type", "veth", "peer", "name", "trc-ns", "netns", n)
        for ns, dev, addrs in ((c, f"trc{SUFFIX}a", ["10.0.1.5/24", "192.168.0.1/24"]),
                               (n, "trc-nc", ["10.0.1.1/24", "192.168.0.2/24"]),
                               (n, "trc-ns", ["10.0.2.1/24"]),
                               (s, f"trc{SUFFIX}b", ["10.0.2.10/24", "10.0.2.11/24"])):
            for a in addrs:
                sh("ip", "-n", ns, "addr", "add", a, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", c, "route", "add", "default", "via", "10.0.1.1")
        sh("ip", "-n", s, "route", "add", "default", "via", "10.0.2.1")
        sh("ip", "-n", n, "route", "add", "default", "via", "10.0.2.10")  # the node's way to the world
        nsexec(n, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        server = subprocess.Popen(["ip", "netns", "exec", s, sys.executable, "-c", SERVER],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield {"client": c, "node": n, "server": s}
    finally:
        if server is not None:
            server.kill()
            server.wait(timeout=10)
        for ns in (c, n, s):
            sh("ip", "netns", "del", ns, check=False)


def _real(ns: str, src: str, dst: str, port: int, proto: str, n: int = 24) -> dict[str, int]:
    del src  # the client namespace picks its source by route: 10.0.1.5 (or 192.168.0.1 to 192.168.0.2)
    return json.loads(nsexec(ns, sys.executable, "-c", CLIENT, dst, str(port), proto, str(n)))


def _agree(rules_from_kernel: str, topo: dict[str, str]) -> None:
    cases = [("10.0.1.5", "172.30.0.10", 80, "TCP"), ("192.168.0.1", "192.168.0.2", 30080, "TCP"),
             ("10.0.1.5", "172.30.0.53", 53, "UDP"), ("10.0.1.5", "172.30.0.50", 80, "TCP"),
             ("10.0.1.5", "172.30.0.60", 80, "TCP")]
    for src, dst, port, proto in cases:
        t = trace_packet(rules_from_kernel, src, dst, port, proto, ["10.0.1.1", "10.0.2.1", "192.168.0.2"])
        seen = _real(topo["client"], src, dst, port, proto, n=24 if t.verdict == "ACCEPT" else 2)
        if t.verdict == "ACCEPT":
            reached = sorted({k.split()[0] for k in seen})
            peers = {k.split()[1] for k in seen}
            assert reached == t.endpoints, (dst, seen, t.endpoints)
            assert peers == ({"10.0.2.1"} if t.masquerade else {src}), (dst, seen)
        else:
            assert set(seen) == {"REFUSED" if t.verdict == "REJECT" else "TIMEOUT"}, (dst, seen, t.verdict)


@pytest.mark.timeout(120)
def test_iptables_traces_agree_with_traffic(topology: dict[str, str]) -> None:
    nsexec(topology["node"], "iptables-restore", "--noflush", input=IPT_RULES)
    _agree(nsexec(topology["node"], "iptables-save"), topology)


@pytest.mark.timeout(120)
def test_nftables_traces_agree_with_traffic(topology: dict[str, str]) -> None:
    nsexec(topology["node"], "nft", "-f", "-", input=NFT_RULES)
    _agree(nsexec(topology["node"], "nft", "-j", "list", "ruleset"), topology)
    _agree(nsexec(topology["node"], "nft", "list", "ruleset"), topology)
