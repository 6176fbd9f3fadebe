"""Real packets through rules applied by IptablesDataplane, inside one throwaway namespace:
the node's own traffic to a ClusterIP is DNATed (nat OUTPUT) and spread over the endpoints, and
a service without endpoints refuses at once (filter REJECT). The multi-node scenarios are in tests/e2e."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from svcproxy.dataplane.iptables import IptablesDataplane

from .conftest import NODE, sh, state_from

pytestmark = pytest.mark.kernel

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 8080)); s.listen(64)
while True:
    c, peer = s.accept(); c.sendall(f"{sys.argv[1]} {peer[0]}\\n".encode()); c.close()
"""

CLIENT = """
import socket, sys, collections, errno
seen = collections.Counter()
for _ in range(int(sys.argv[3])):
    c = socket.socket(); c.settimeout(2)
    try:
        c.connect((sys.argv[1], int(sys.argv[2]))); seen[c.recv(100).decode().split()[0]] += 1
    except ConnectionRefusedError:
        seen["refused"] += 1
    except OSError as e:
        seen[type(e).__name__] += 1
    finally:
        c.close()
print(dict(seen))
"""

SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 172.30.0.10
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints:
- {addresses: [10.0.1.10], nodeName: test-node}
- {addresses: [10.0.1.11], nodeName: test-node}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  clusterIP: 172.30.0.50
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]
"""


def test_clusterip_from_the_node_spreads_and_empty_service_refuses(netns: str) -> None:
    sh(netns, "ip", "link", "add", "ipt0", "type", "veth", "peer", "name", "ipt1")
    sh(netns, "ip", "link", "set", "ipt0", "up")
    sh(netns, "ip", "link", "set", "ipt1", "up")
    for ip in ("192.168.0.2/24", "10.0.1.10/24", "10.0.1.11/24"):
        sh(netns, "ip", "addr", "add", ip, "dev", "ipt0")
    sh(netns, "ip", "route", "add", "172.30.0.0/16", "dev", "ipt0")
    servers = [subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", SERVER, ip])
               for ip in ("10.0.1.10", "10.0.1.11")]
    try:
        IptablesDataplane(NODE, netns=netns).sync(state_from(SERVICES))
        time.sleep(0.3)
        out = sh(netns, sys.executable, "-c", CLIENT, "172.30.0.10", "80", "40")
        seen = eval(out)  # noqa: S307 - our own client's dict output
        assert set(seen) == {"10.0.1.10", "10.0.1.11"}, seen
        assert min(seen.values()) >= 5  # both endpoints get a share
        started = time.monotonic()
        assert eval(sh(netns, sys.executable, "-c", CLIENT, "172.30.0.50", "80", "3")) == {"refused": 3}
        assert time.monotonic() - started < 1.5  # refused at once, not a timeout
    finally:
        for p in servers:
            p.kill()
            p.wait()
