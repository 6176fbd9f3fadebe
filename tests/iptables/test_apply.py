"""IptablesDataplane against the real kernel, inside throwaway network namespaces."""

from __future__ import annotations

import dataclasses

import pytest

from svcproxy.dataplane import ApplyError
from svcproxy.dataplane.iptables import IptablesDataplane
from svcproxy.dataplane.iptables.names import service_chains
from svcproxy.state import EndpointInfo, ProxyState

from .conftest import NODE, saved, sh, state_from

pytestmark = pytest.mark.kernel

WEB = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 172.30.0.10
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}]
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
metadata: {name: dns, namespace: kube-system}
spec:
  clusterIP: 172.30.0.53
  ports: [{name: dns, protocol: UDP, port: 53, targetPort: 53}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{name: dns, protocol: UDP, port: 53}]
endpoints:
- {addresses: [10.0.1.20], nodeName: test-node}
"""

WEB_SVC = service_chains("default/web:http", "TCP")[0]


def with_endpoints(state: ProxyState, key: str, ips: list[str]) -> ProxyState:
    """A copy of state where every port of one service has exactly these endpoint IPs."""
    svc = state.services[key]
    eps = {spn: tuple(EndpointInfo(ip, old[0].port, node_name="test-node", is_local=True) for ip in ips)
           for spn, old in svc.endpoints.items()}
    services = dict(state.services)
    services[key] = dataclasses.replace(svc, endpoints=eps)
    return ProxyState(services=services, zone=state.zone)


def chains(ns: str, table: str = "nat") -> set[str]:
    return {line[1:].split()[0] for line in saved(ns, table).splitlines() if line.startswith(":")}


def test_full_sync_programs_chains_and_jumps_once(netns: str) -> None:
    dp = IptablesDataplane(NODE, netns=netns)
    result = dp.sync(state_from(WEB))
    assert result.full and result.input_bytes > 0 and result.rules["nat"] > 10
    nat = saved(netns, "nat")
    assert WEB_SVC in nat and "--to-destination 10.0.1.11:8080" in nat
    assert '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in nat
    filt = saved(netns, "filter")
    assert "-A KUBE-FORWARD" in filt and "-j KUBE-EXTERNAL-SERVICES" in filt
    assert "KUBE-PROXY-CANARY" in saved(netns, "mangle")
    # A second full sync rewrites everything but does not duplicate the jumps.
    dp.sync(state_from(WEB))
    assert saved(netns, "nat") == nat
    assert saved(netns, "filter") == filt


def test_partial_sync_writes_only_what_changed(netns: str) -> None:
    dp = IptablesDataplane(NODE, netns=netns)
    state = state_from(WEB)
    dp.sync(state)
    before = chains(netns)
    changed = with_endpoints(state, "default/web", ["10.0.1.10", "10.0.1.12"])
    result = dp.sync(changed, {"default/web"})
    data = dp.last_input
    assert not result.full and result.input_bytes == len(data) < 10_000
    # Only web's own chains are declared; KUBE-SERVICES (unchanged) and dns are left out.
    declared = {line[1:].split()[0] for line in data.splitlines() if line.startswith(":")}
    assert WEB_SVC in declared and "KUBE-SERVICES" not in declared and "*filter" not in data
    assert not any("dns" in line for line in data.splitlines())
    assert data.count("-X KUBE-SEP-") == 1  # 10.0.1.11's chain is gone
    # 10.0.1.10's endpoint chain did not change: it is neither declared (flushed) nor rewritten
    deleted = {line.split()[1] for line in data.splitlines() if line.startswith("-X ")}
    assert len({c for c in declared - deleted if c.startswith("KUBE-SEP-")}) == 1 and "--to-destination 10.0.1.10:8080" not in data
    nat = saved(netns, "nat")
    assert "10.0.1.12:8080" in nat and "10.0.1.11:8080" not in nat and "10.0.1.10:8080" in nat
    assert len(chains(netns)) == len(before)
    # No change at all: nothing to write.
    assert dp.sync(changed, {"default/web"}).input_bytes == 0


def test_service_removed_and_added_back(netns: str) -> None:
    dp = IptablesDataplane(NODE, netns=netns)
    state = state_from(WEB)
    dp.sync(state)
    without = ProxyState(services={k: v for k, v in state.services.items() if k != "default/web"})
    dp.sync(without, {"default/web"})
    assert not any(c.startswith(("KUBE-SVC", "KUBE-SEP", "KUBE-EXT")) and "web" in c for c in chains(netns))
    assert WEB_SVC not in chains(netns) and "KUBE-SERVICES" in dp.last_input
    dp.sync(state, {"default/web"})
    assert WEB_SVC in chains(netns)


def test_failed_restore_keeps_old_rules_and_next_sync_is_full(netns: str) -> None:
    dp = IptablesDataplane(NODE, netns=netns)
    state = state_from(WEB)
    dp.sync(state)
    good = saved(netns, "nat")
    # Someone else's rule now refers to web's KUBE-SEP chain, so deleting that chain must fail.
    sep = next(line.split()[-1] for line in good.splitlines() if line.startswith(f"-A {WEB_SVC}") and "SEP" in line)
    sh(netns, "iptables", "-t", "nat", "-N", "FOREIGN")
    sh(netns, "iptables", "-t", "nat", "-A", "FOREIGN", "-j", sep)
    before = saved(netns, "nat")
    changed = with_endpoints(state, "default/web", ["10.0.1.30"])
    with pytest.raises(ApplyError, match=r"line \d+"):
        dp.sync(changed, {"default/web"})
    assert saved(netns, "nat") == before  # the transaction left everything as it was
    sh(netns, "iptables", "-t", "nat", "-F", "FOREIGN")
    result = dp.sync(changed, {"default/web"})
    assert result.full
    assert "10.0.1.30:8080" in saved(netns, "nat")


def test_full_sync_deletes_chains_left_by_an_earlier_run(netns: str) -> None:
    state = state_from(WEB)
    IptablesDataplane(NODE, netns=netns).sync(state)
    smaller = with_endpoints(state, "default/web", ["10.0.1.10"])
    fresh = IptablesDataplane(NODE, netns=netns)  # a restarted daemon: knows nothing yet
    assert fresh.sync(smaller).full
    nat = saved(netns, "nat")
    assert "10.0.1.11" not in nat
    seps = [c for c in chains(netns) if c.startswith("KUBE-SEP-")]
    assert len(seps) == 2  # web's one endpoint and dns's


def test_cleanup_removes_ours_and_keeps_foreign_rules_byte_for_byte(netns: str) -> None:
    foreign = {
        "filter": "*filter\n:FOREIGN-IN - [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\n"
                  "-A FOREIGN-IN -s 10.9.0.0/16 -j DROP\n-A FORWARD -j FOREIGN-IN\nCOMMIT\n",
        "nat": "*nat\n:FOREIGN-NAT - [0:0]\n-A POSTROUTING -s 10.9.0.0/16 -j MASQUERADE\n"
               "-A FOREIGN-NAT -p udp -j RETURN\n-A PREROUTING -j FOREIGN-NAT\nCOMMIT\n",
    }
    for text in foreign.values():
        sh(netns, "iptables-restore", "--noflush", input=text)
    sh(netns, "ip6tables-restore", "--noflush", input=foreign["filter"].replace("10.9.0.0/16", "fd09::/64"))
    before = {t: saved(netns, t) for t in ("filter", "nat")}
    before6 = saved(netns, "filter", 6)
    dp = IptablesDataplane(NODE, netns=netns)
    dp.sync(state_from(WEB))
    v6 = dataclasses.replace(NODE, ip_family=6, node_ips=("fd00::2",), cluster_cidrs=("fd00:10::/64",))
    IptablesDataplane(v6, netns=netns).sync(ProxyState())
    assert "KUBE-SERVICES" in saved(netns, "nat") and "KUBE-SERVICES" in saved(netns, "filter", 6)
    dp.cleanup()
    for table in ("filter", "nat"):
        assert saved(netns, table) == before[table]
    assert saved(netns, "filter", 6) == before6
    assert "KUBE" not in saved(netns, "nat", 6) and "KUBE" not in saved(netns, "mangle")
    dp.cleanup()  # nothing left to remove: still fine


def test_cleanup_cli_in_namespace(netns: str) -> None:
    IptablesDataplane(NODE, netns=netns).sync(state_from(WEB))
    out = sh(netns, ".venv/bin/svcproxy", "cleanup", "--proxy-mode", "iptables")
    assert "iptables: removed" in out
    assert "KUBE" not in saved(netns, "nat") and "KUBE" not in saved(netns, "filter")


def test_batched_full_sync_gives_the_same_rules_as_one_batch(netns: str) -> None:
    state = state_from(WEB)
    IptablesDataplane(NODE, netns=netns, batch_chains=10_000).sync(state)
    one_batch = saved(netns, "nat"), saved(netns, "filter")
    IptablesDataplane(NODE, netns=netns).cleanup()
    small = IptablesDataplane(NODE, netns=netns, batch_chains=1, warm_batch_chains=2)
    small.sync(state)  # cold: several calls, KUBE-SERVICES filled batch by batch
    assert len(small.last_input) >= 4
    assert (saved(netns, "nat"), saved(netns, "filter")) == one_batch
    smaller = with_endpoints(state, "default/web", ["10.0.1.10"])
    small.sync(smaller)  # warm: chains rewritten in place, the stale SEP chain deleted last
    assert "-X KUBE-SEP-" in small.last_input[-1] and "10.0.1.11" not in saved(netns, "nat")
    small.sync(state)
    assert (saved(netns, "nat"), saved(netns, "filter")) == one_batch


def test_cold_start_hooks_masquerading_before_any_service_rule(netns: str) -> None:
    """kube-proxy links its chains before it restores: on a cold start no DNAT rule may be
    reachable while POSTROUTING does not yet jump to KUBE-POSTROUTING (a client outside the
    cluster would reach the pod unmasqueraded). Checked in the kernel before every restore
    that brings service chains, with batches of one service so there are several."""
    dp = IptablesDataplane(NODE, netns=netns, batch_chains=1)
    seen: list[tuple[bool, bool]] = []
    restore = dp.ipt.restore

    def checked(data: str) -> None:
        if ":KUBE-SVC-" in data:
            seen.append(("-j KUBE-POSTROUTING" in sh(netns, "iptables", "-t", "nat", "-S", "POSTROUTING"),
                         "-j KUBE-SERVICES" in sh(netns, "iptables", "-t", "nat", "-S", "PREROUTING")))
        restore(data)

    dp.ipt.restore = checked  # type: ignore[method-assign]
    dp.sync(state_from(WEB))
    assert len(seen) >= 2, "the services came in several batches"
    assert all(post for post, _ in seen), f"a service batch went in before masquerading was hooked: {seen}"
    assert all(pre for _, pre in seen), "the entry points were hooked before the services were filled"
    assert "10.0.1.11:8080" in saved(netns, "nat")
