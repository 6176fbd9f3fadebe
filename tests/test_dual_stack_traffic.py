"""Dual-stack end to end: ONE `svcproxy run` on a node programs IPv4 and IPv6 together (no
--ip-family; --node-ip and --cluster-cidr given once per family), real TCP and UDP packets over
both families, in every mode:

    client  192.168.0.100  ---- 192.168.0.2    node (svcproxy)  10.1.0.1   ---- pod 10.1.0.10, .11
            fd00:192::100       fd00:192::2                      fd00:10:1::1     fd00:10:1::10, ::11

ClusterIP from outside (spread over both endpoints, masqueraded), from the node itself,
NodePort TCP and UDP, externalTrafficPolicy=Local (the client's address kept), a Service
without endpoints refused at once. userspace mode relays every connection, so there the
endpoints always see the node (kube-proxy's old userspace mode did the same).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from svcproxy.lab.netns import (
    exec_in,
    ip_batch,
    namespace_pids,
    run,
    scratch_namespace,
    spawn,
    stop_processes,
    sysctls,
)

pytestmark = pytest.mark.kernel

SVCPROXY = str(Path(sys.executable).with_name("svcproxy"))
PODS = {4: ("10.1.0.10", "10.1.0.11"), 6: ("fd00:10:1::10", "fd00:10:1::11")}
NODE = {4: "192.168.0.2", 6: "fd00:192::2"}
NODE_POD_SIDE = {4: "10.1.0.1", 6: "fd00:10:1::1"}
CLIENT = {4: "192.168.0.100", 6: "fd00:192::100"}
CLUSTER_IP = {4: "172.30.0.10", 6: "fd00:172:30::10"}
LOCAL_IP = {4: "172.30.0.20", 6: "fd00:172:30::20"}
EMPTY_IP = {4: "172.30.0.50", 6: "fd00:172:30::50"}


def _service(name: str, ips: dict[int, str], ports: str, extra: str = "") -> str:
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  type: {"NodePort" if "nodePort" in ports else "ClusterIP"}
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: {ips[4]}
  clusterIPs: [{ips[4]}, "{ips[6]}"]{extra}
  ports: {ports}
"""


def _slices(service: str) -> str:
    out = []
    for fam in (4, 6):
        eps = "\n".join(f'- {{addresses: ["{ip}"], nodeName: test-node, conditions: {{ready: true}}}}'
                        for ip in PODS[fam])
        out.append(f"""apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {service}-v{fam}, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv{fam}
ports: [{{name: http, protocol: TCP, port: 8080}}, {{name: dns, protocol: UDP, port: 5353}}]
endpoints:
{eps}
""")
    return "---\n".join(out)


MANIFESTS = "---\n".join([
    _service("web", CLUSTER_IP, "[{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}, "
                                "{name: dns, protocol: UDP, port: 53, targetPort: 5353, nodePort: 30053}]"),
    _slices("web"),
    _service("local", LOCAL_IP, "[{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30081}]",
             "\n  externalTrafficPolicy: Local"),
    _slices("local"),
    _service("empty", EMPTY_IP, "[{name: http, protocol: TCP, port: 80, targetPort: 8080}]"),
])

# Each server answers "<its own address> <the peer address it saw>".
SERVER = """
import socket, sys, threading
addr = sys.argv[1]
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
t = socket.socket(fam); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((addr, 8080)); t.listen(64)
u = socket.socket(fam, socket.SOCK_DGRAM); u.bind((addr, 5353))
def udp():
    while True:
        data, peer = u.recvfrom(100); u.sendto(f"{addr} {peer[0]}".encode(), peer)
threading.Thread(target=udp, daemon=True).start()
while True:
    c, peer = t.accept(); c.sendall(f"{addr} {peer[0]}".encode()); c.close()
"""

CLIENT_PROG = """
import collections, socket, sys
host, port, proto, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
seen = collections.Counter()
for _ in range(n):
    s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(5)  # a lost SYN is retried after 1 s and 3 s; a loaded CI machine needs the second
    try:
        if proto == "tcp":
            s.connect((host, port)); seen[s.recv(200).decode()] += 1
        else:
            s.sendto(b"q", (host, port)); seen[s.recvfrom(200)[0].decode()] += 1
    except ConnectionRefusedError:
        seen["refused"] += 1
    except OSError as e:
        seen[type(e).__name__] += 1
    finally:
        s.close()
print(repr(dict(seen)))
"""


def connect(ns: str, host: str, port: int, proto: str = "tcp", n: int = 20) -> dict[str, int]:
    out = exec_in(ns, [sys.executable, "-c", CLIENT_PROG, host, str(port), proto, str(n)], timeout=120)
    return ast.literal_eval(out.strip().splitlines()[-1])


def _programmed(node: str, mode: str) -> bool:
    """Both families are in: each has its service rules (userspace: its addresses on svcproxy0)."""
    if mode == "userspace":
        addrs = exec_in(node, ["ip", "-brief", "addr", "show", "dev", "svcproxy0"], check=False)
        return all(ip in addrs for ip in (*CLUSTER_IP.values(), *LOCAL_IP.values()))
    if mode == "iptables":
        return all("KUBE-SVC-" in exec_in(node, [tool, "-t", "nat"], check=False)
                   for tool in ("iptables-save", "ip6tables-save"))
    return all("service-" in exec_in(node, ["nft", "list", "table", fam, "kube-proxy"], check=False)
               for fam in ("ip", "ip6"))


@pytest.fixture(scope="module", params=["iptables", "nftables", "nftables-maps", "userspace"])
def dual(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The three namespaces, servers in the pod on both families, one svcproxy run on the node."""
    mode, _, layout = request.param.partition("-")
    tmp = tmp_path_factory.mktemp(f"ds{mode}{layout}")
    (tmp / "services.yaml").write_text(MANIFESTS)
    with scratch_namespace("dsc") as client, scratch_namespace("dsn") as node, scratch_namespace("dsp") as pod:
        run(["ip", "link", "add", "dscn0", "netns", client, "type", "veth", "peer", "name", "dscn1", "netns", node])
        run(["ip", "link", "add", "dsnp0", "netns", node, "type", "veth", "peer", "name", "dsnp1", "netns", pod])
        for ns in (client, node, pod):
            sysctls(ns, {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"})
        sysctls(node, {"net.ipv6.conf.all.forwarding": "1", "net.ipv4.ip_forward": "1"})
        ip_batch(client, ["link set dscn0 up", "addr add 192.168.0.100/24 dev dscn0",
                          "addr add fd00:192::100/64 dev dscn0 nodad",
                          "route add default via 192.168.0.2", "route add default via fd00:192::2"])
        ip_batch(node, ["link set dscn1 up", "addr add 192.168.0.2/24 dev dscn1",
                        "addr add fd00:192::2/64 dev dscn1 nodad",
                        "link set dsnp0 up", "addr add 10.1.0.1/24 dev dsnp0", "addr add fd00:10:1::1/64 dev dsnp0 nodad",
                        # the node's own way out (an uplink of its own, as on a real node)
                        "link add dsup type veth peer name dsup1", "link set dsup up", "link set dsup1 up",
                        "addr add 192.168.99.2/24 dev dsup", "addr add fd00:99::2/64 dev dsup nodad",
                        "route add default via 192.168.99.1 dev dsup", "route add default via fd00:99::1 dev dsup"])
        ip_batch(pod, ["link set dsnp1 up", *(f"addr add {ip}/24 dev dsnp1" for ip in PODS[4]),
                       *(f"addr add {ip}/64 dev dsnp1 nodad" for ip in PODS[6]),
                       "route add default via 10.1.0.1", "route add default via fd00:10:1::1"])
        for addr in (*PODS[4], *PODS[6]):
            spawn(pod, [sys.executable, "-c", SERVER, addr], tmp / f"server-{addr.replace(':', '_')}.log")
        daemon = spawn(node, [SVCPROXY, "run", "-f", str(tmp / "services.yaml"), "--proxy-mode", mode,
                              *(["--nftables-layout", layout] if layout else []),
                              "--node-ip", NODE[4], "--node-ip", NODE[6],
                              "--cluster-cidr", "10.0.0.0/8", "--cluster-cidr", "fd00:10::/48", "--conntrack-max-per-core=0",
                              "--hostname-override", "test-node", "--healthz-bind-address", "",
                              "--metrics-bind-address", "", "--status-bind-address", "",
                              "--min-sync-period", "0s"], tmp / "svcproxy.log")
        try:
            deadline = time.monotonic() + 60
            log = tmp / "svcproxy.log"
            # both families' first syncs done (a sync writes in several steps), and in the kernel
            while not (all(f"IPv{f} full sync" in log.read_text() for f in (4, 6)) and _programmed(node, mode)):
                assert daemon.poll() is None, (tmp / "svcproxy.log").read_text()
                assert time.monotonic() < deadline, "svcproxy did not program both families within 60 s"
                time.sleep(0.2)
            time.sleep(0.3 if mode == "userspace" else 0)  # its listeners open right after the addresses
            yield {"client": client, "node": node, "pod": pod, "mode": mode, "log": str(tmp / "svcproxy.log")}
        finally:
            stop_processes([*namespace_pids(node), *namespace_pids(pod)])


FAMILIES = pytest.mark.parametrize("fam", [4, 6], ids=["IPv4", "IPv6"])


def _answers(seen: dict[str, int], fam: int, n: int) -> tuple[set[str], set[str]]:
    """(who served, which client address they saw), after checking every try was answered."""
    assert sum(seen.values()) == n and all(" " in k for k in seen), seen
    return {k.split()[0] for k in seen}, {k.split()[1] for k in seen}


@FAMILIES
def test_clusterip_from_outside_is_spread_and_masqueraded(dual: dict[str, str], fam: int) -> None:
    seen = connect(dual["client"], CLUSTER_IP[fam], 80)
    served, sources = _answers(seen, fam, 20)
    assert served == set(PODS[fam]), seen
    assert sources == {NODE_POD_SIDE[fam]}, "a client outside the cluster CIDR is masqueraded"


@FAMILIES
def test_clusterip_from_the_node_itself(dual: dict[str, str], fam: int) -> None:
    served, _ = _answers(connect(dual["node"], CLUSTER_IP[fam], 80), fam, 20)
    assert served == set(PODS[fam])


@FAMILIES
def test_nodeport_tcp_and_udp(dual: dict[str, str], fam: int) -> None:
    served, sources = _answers(connect(dual["client"], NODE[fam], 30080), fam, 20)
    assert served <= set(PODS[fam]) and sources == {NODE_POD_SIDE[fam]}
    served, sources = _answers(connect(dual["client"], NODE[fam], 30053, "udp", n=10), fam, 10)
    assert served <= set(PODS[fam]) and sources == {NODE_POD_SIDE[fam]}
    served, _ = _answers(connect(dual["client"], CLUSTER_IP[fam], 53, "udp", n=10), fam, 10)
    assert served <= set(PODS[fam])


@FAMILIES
def test_external_traffic_policy_local_keeps_the_client_address(dual: dict[str, str], fam: int) -> None:
    served, sources = _answers(connect(dual["client"], NODE[fam], 30081), fam, 20)
    assert served <= set(PODS[fam])
    want = NODE_POD_SIDE[fam] if dual["mode"] == "userspace" else CLIENT[fam]
    assert sources == {want}


@FAMILIES
def test_service_without_endpoints_is_refused(dual: dict[str, str], fam: int) -> None:
    # kernel modes: the REJECT's ICMP port-unreachable; userspace: nothing listens, a RST
    assert connect(dual["client"], EMPTY_IP[fam], 80, n=2) == {"refused": 2}


def test_one_process_programs_both_families(dual: dict[str, str]) -> None:
    log = Path(dual["log"]).read_text()
    assert "IPv4 + IPv6 dual-stack" in log, log[-2000:]
    assert "IPv4 full sync" in log and "IPv6 full sync" in log, log[-2000:]
    assert len(namespace_pids(dual["node"])) == 1, "one svcproxy process serves both families"


BROKEN_TOOL = """#!/bin/sh
echo "$(basename "$0"): can't initialize ip6tables table 'nat': Table does not exist (svcproxy test)" >&2
exit 1
"""
# passes kube-proxy's Present() check (the family's nat POSTROUTING lists), fails the rest
PRESENT_THEN_BROKEN = """#!/bin/sh
case "$*" in *"-t nat -S POSTROUTING"*) exec {real} "$@";; esac
""" + BROKEN_TOOL.split("\n", 1)[1]


def _broken_ip6tables(tmp_path: Path, present: bool) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ip6tables", "ip6tables-restore", "ip6tables-save"):
        text = PRESENT_THEN_BROKEN.format(real=shutil.which(tool)) if present and tool == "ip6tables" else BROKEN_TOOL
        (bin_dir / tool).write_text(text)
        (bin_dir / tool).chmod(0o755)
    return bin_dir


def test_a_family_whose_iptables_is_not_present_is_not_proxied(tmp_path: Path) -> None:
    """kube-proxy's platformCheckSupported: ip6tables that cannot list its nat table means
    IPv6 is not supported, so the node runs IPv4 alone, healthy, and the log says why."""
    bin_dir = _broken_ip6tables(tmp_path, present=False)
    (tmp_path / "services.yaml").write_text(MANIFESTS)
    with scratch_namespace("dsn") as node:
        run(["ip", "-n", node, "link", "set", "lo", "up"])
        log = tmp_path / "svcproxy.log"
        env_path = f"{bin_dir}:{os.environ.get('PATH', '')}"
        spawn(node, ["env", f"PATH={env_path}", SVCPROXY, "run", "-f", str(tmp_path / "services.yaml"),
                     "--proxy-mode", "iptables", "--node-ip", "10.1.0.1", "--node-ip", "fd00:10:1::1",
                     "--hostname-override", "test-node", "--healthz-bind-address", "127.0.0.1:10256",
                     "--metrics-bind-address", "", "--status-bind-address", "",
                     "--min-sync-period", "0s", "--conntrack-max-per-core=0"], log)
        try:
            deadline = time.monotonic() + 30
            while "IPv4 full sync" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            text = log.read_text()
            assert "no IPv6 support: ip6tables -t nat fails: ip6tables: can't initialize" in text, text[-2000:]
            assert "node test-node (IPv4)," in text and "IPv6 sync" not in text
            code = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:10256/healthz').read().decode())"
            doc = json.loads(exec_in(node, [sys.executable, "-c", code]))
            assert doc["healthy"] is True and list(doc["status"]) == ["IPv4"]
        finally:
            stop_processes(namespace_pids(node))


def test_a_family_that_cannot_be_programmed_does_not_stop_the_other(tmp_path: Path) -> None:
    """ip6tables present (it lists its nat table) but every restore fails: IPv4 is programmed
    and serves traffic, the log names the IPv6 failure, and /healthz answers 503 once the IPv6
    change has waited past its timeout."""
    bin_dir = _broken_ip6tables(tmp_path, present=True)
    (tmp_path / "services.yaml").write_text(MANIFESTS)
    with scratch_namespace("dsf") as node, scratch_namespace("dsq") as pod:
        run(["ip", "link", "add", "dsfp0", "netns", node, "type", "veth", "peer", "name", "dsfp1", "netns", pod])
        ip_batch(node, ["link set dsfp0 up", "addr add 10.1.0.1/24 dev dsfp0", "addr add fd00:10:1::1/64 dev dsfp0 nodad",
                        # a way out, so that the node routes the ClusterIP before the DNAT
                        "link add dsfu type veth peer name dsfu1", "link set dsfu up", "link set dsfu1 up",
                        "addr add 192.168.99.2/24 dev dsfu", "route add default via 192.168.99.1 dev dsfu"])
        ip_batch(pod, ["link set dsfp1 up", *(f"addr add {ip}/24 dev dsfp1" for ip in PODS[4]),
                       "route add default via 10.1.0.1"])
        for addr in PODS[4]:
            spawn(pod, [sys.executable, "-c", SERVER, addr], tmp_path / f"server-{addr}.log")
        log = tmp_path / "svcproxy.log"
        env_path = f"{bin_dir}:{os.environ.get('PATH', '')}"
        daemon = spawn(node, ["env", f"PATH={env_path}", SVCPROXY, "run", "-f", str(tmp_path / "services.yaml"),
                              "--proxy-mode", "iptables", "--node-ip", "10.1.0.1", "--node-ip", "fd00:10:1::1",
                              "--hostname-override", "test-node", "--healthz-bind-address", "127.0.0.1:10256",
                              "--metrics-bind-address", "", "--status-bind-address", "",
                              "--min-sync-period", "0s", "--sync-period", "1s", "--conntrack-max-per-core=0"], log)
        try:
            deadline = time.monotonic() + 30
            while "KUBE-SVC-" not in exec_in(node, ["iptables-save", "-t", "nat"], check=False):
                assert daemon.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            served, _ = _answers(connect(node, CLUSTER_IP[4], 80), 4, 20)
            assert served == set(PODS[4])
            code = ("import urllib.request, urllib.error\ntry:\n print(urllib.request.urlopen("
                    "'http://127.0.0.1:10256/healthz', timeout=2).status)\nexcept urllib.error.HTTPError as e:\n"
                    " print(e.code)")
            deadline = time.monotonic() + 30
            while (status := exec_in(node, [sys.executable, "-c", code]).strip()) != "503":
                assert time.monotonic() < deadline, f"/healthz stayed {status}: {log.read_text()[-2000:]}"
                time.sleep(0.3)
            assert daemon.poll() is None, "the daemon keeps running"
            text = log.read_text()
            assert "IPv6 sync failed" in text and "Table does not exist" in text, text[-2000:]
            assert "IPv4 sync failed" not in text
            # IPv4 still follows changes while IPv6 fails
            (tmp_path / "services.yaml").write_text(MANIFESTS.replace('"10.1.0.11"', '"10.1.0.10"'))
            deadline = time.monotonic() + 15
            while True:
                served, _ = _answers(connect(node, CLUSTER_IP[4], 80, n=10), 4, 10)
                if served == {"10.1.0.10"}:
                    break
                assert time.monotonic() < deadline, "IPv4 did not follow the change"
                time.sleep(0.3)
        finally:
            stop_processes([*namespace_pids(node), *namespace_pids(pod)])
