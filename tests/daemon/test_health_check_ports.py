"""Health-check node ports on a dual-stack node: real HTTP requests over IPv4 and IPv6, from the
pod namespace (an outside client, as a cloud load balancer's probe) and from the node itself.
kube-proxy listens per family, on the family's any-address or on the addresses
--nodeport-addresses selects."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .netenv import NODE_IP, PYTHON, Daemon, NetEnv

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]
NODE_IP6, CLIENT_IP6 = "fd00:1::1", "fd00:1::10"
HC_PORT = 32100

PROBE = """
import json, sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=2)
    print(json.dumps([r.status, json.loads(r.read())]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, json.loads(e.read())]))
except OSError as e:
    print(json.dumps([0, str(e)]))
"""


def manifests(path: Path) -> None:
    """A dual-stack LoadBalancer Service with externalTrafficPolicy Local: one local IPv4
    endpoint, two local IPv6 ones (so each family's answer shows whose endpoints it counts)."""
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb", "namespace": "default"},
           "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": HC_PORT,
                    "ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"],
                    "clusterIP": "172.30.0.20", "clusterIPs": ["172.30.0.20", "fd00:172:30::20"],
                    "ports": [{"name": "p", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30020}]}}

    def eps(fam: int, ips: list[str]) -> dict:
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": f"lb-v{fam}", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "lb"}},
                "addressType": f"IPv{fam}", "ports": [{"name": "p", "protocol": "TCP", "port": 8080}],
                "endpoints": [{"addresses": [ip], "nodeName": "node-a", "conditions": {"ready": True}} for ip in ips]}

    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        svc, eps(4, ["10.0.1.20"]), eps(6, ["fd00:1::20", "fd00:1::21"])]}))


def dual_stack(env: NetEnv) -> None:
    env.exec(env.node, "ip", "addr", "add", f"{NODE_IP6}/64", "dev", "dmnveth", "nodad")
    env.exec(env.pod, "ip", "addr", "add", f"{CLIENT_IP6}/64", "dev", "dmnpod", "nodad")


def probe(env: NetEnv, ns: str, host: str) -> tuple[int, object]:
    url = f"http://[{host}]:{HC_PORT}/" if ":" in host else f"http://{host}:{HC_PORT}/"
    status, body = json.loads(env.exec(ns, PYTHON, "-c", PROBE, url))
    return status, body


def wait_listening(env: NetEnv, host: str, timeout: float = 15) -> tuple[int, object]:
    t0 = time.monotonic()
    while True:
        status, body = probe(env, env.pod, host)
        if status or time.monotonic() - t0 > timeout:
            return status, body
        time.sleep(0.1)


def start(env: NetEnv, tmp_path: Path, *extra: str) -> Daemon:
    dual_stack(env)
    m = tmp_path / "manifests"
    m.mkdir()
    manifests(m / "lb.json")
    daemon = Daemon(env, m, "iptables", tmp_path / "daemon.log", "--node-ip", NODE_IP6, *extra).start()
    daemon.wait_sync(0)
    return daemon


def test_both_families_answer_health_checks_with_their_own_endpoints(env: NetEnv, tmp_path: Path) -> None:
    daemon = start(env, tmp_path)
    try:
        v4, v6 = wait_listening(env, NODE_IP), wait_listening(env, NODE_IP6)
        loop4, loop6 = probe(env, env.node, "127.0.0.1"), probe(env, env.node, "::1")
    finally:
        daemon.stop()
    service = {"namespace": "default", "name": "lb"}
    assert v4 == (200, {"service": service, "localEndpoints": 1, "serviceProxyHealthy": True}), daemon.log()[-2000:]
    assert v6 == (200, {"service": service, "localEndpoints": 2, "serviceProxyHealthy": True}), daemon.log()[-2000:]
    # without --nodeport-addresses: every address of each family
    assert loop4[0] == 200 and loop6[0] == 200


def test_nodeport_addresses_choose_where_they_listen(env: NetEnv, tmp_path: Path) -> None:
    daemon = start(env, tmp_path, "--nodeport-addresses", "10.0.1.0/24", "--nodeport-addresses", "fd00:1::/64")
    try:
        v4, v6 = wait_listening(env, NODE_IP), wait_listening(env, NODE_IP6)
        loop4, loop6 = probe(env, env.node, "127.0.0.1"), probe(env, env.node, "::1")
    finally:
        daemon.stop()
    assert v4[0] == 200 and v6[0] == 200, daemon.log()[-2000:]
    assert loop4[0] == 0 and loop6[0] == 0, "loopback is not in --nodeport-addresses: nothing listens there"


def test_a_family_without_nodeport_addresses_listens_on_all(env: NetEnv, tmp_path: Path) -> None:
    """kube-proxy: no CIDR of a family in --nodeport-addresses means all of that family's addresses."""
    daemon = start(env, tmp_path, "--nodeport-addresses", "10.0.1.0/24")
    try:
        v4, v6 = wait_listening(env, NODE_IP), wait_listening(env, NODE_IP6)
        loop4, loop6 = probe(env, env.node, "127.0.0.1"), probe(env, env.node, "::1")
    finally:
        daemon.stop()
    assert v4[0] == 200 and v6[0] == 200, daemon.log()[-2000:]
    assert loop4[0] == 0 and loop6[0] == 200
