"""Property: the kernel's iptables-restore accepts every ruleset rendered from valid input."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svcproxy.config import NodeConfig
from svcproxy.dataplane.iptables import IptablesDataplane
from svcproxy.dataplane.iptables.render import render_ruleset
from svcproxy.lab.netns import scratch_namespace
from svcproxy.state import EndpointInfo, ProxyState, ServicePortInfo, ServicePortName, ServiceState

from .conftest import sh

pytestmark = pytest.mark.kernel

NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
PORTS = st.integers(1, 65535)


def ips(family: int, net: str) -> st.SearchStrategy[str]:
    network = ipaddress.ip_network(net)
    return st.integers(1, min(network.num_addresses - 2, 2**32)).map(lambda i: str(network[i]))


@st.composite
def service(draw: st.DrawFn, family: int, index: int) -> ServiceState:
    pods, vips, lbs = ("10.0.0.0/16", "172.30.0.0/16", "192.168.100.0/24") if family == 4 else (
        "fd00:10::/64", "fd00:30::/108", "fd00:100::/120")
    ns, name = draw(NAMES), f"svc{index}"
    kind = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
    externally = kind != "ClusterIP"
    ports = []
    endpoints = {}
    for pi, proto in enumerate(draw(st.lists(st.sampled_from(["TCP", "UDP", "SCTP"]), min_size=1, max_size=3))):
        spn = ServicePortName(ns, name, f"p{pi}", proto)
        lb = tuple(draw(st.lists(ips(family, lbs), max_size=2, unique=True))) if kind == "LoadBalancer" else ()
        ranges = tuple(draw(st.lists(st.sampled_from(
            ["203.0.113.0/24", "192.168.0.0/30"] if family == 4 else ["2001:db8::/32", "fd00::/8"]),
            max_size=2, unique=True))) if lb else ()
        etp_local = externally and draw(st.booleans())
        ports.append(ServicePortInfo(
            name=spn, cluster_ip=draw(ips(family, vips)), port=draw(PORTS), protocol=proto,
            node_port=draw(st.integers(30000, 32767)) if externally else 0,
            external_ips=tuple(draw(st.lists(ips(family, lbs), max_size=2, unique=True))),
            load_balancer_ips=lb, load_balancer_source_ranges=ranges,
            session_affinity_timeout=draw(st.sampled_from([0, 0, 10800, 5])),
            external_policy_local=etp_local, internal_policy_local=draw(st.booleans()),
            health_check_node_port=draw(st.integers(30000, 32767)) if etp_local and lb else 0))
        endpoints[spn] = tuple(
            EndpointInfo(ip, draw(PORTS), is_local=local, ready=ready, serving=True, terminating=not ready,
                         node_name="test-node" if local else "other")
            for ip, local, ready in draw(st.lists(st.tuples(ips(family, pods), st.booleans(), st.booleans()),
                                                  max_size=4, unique_by=lambda t: t[0])))
    return ServiceState(f"{ns}/{name}", tuple(ports), endpoints)


@st.composite
def states(draw: st.DrawFn, family: int) -> ProxyState:
    count = draw(st.integers(0, 6))
    return ProxyState(services={s.key: s for s in (draw(service(family, i)) for i in range(count))})


def configs(family: int) -> st.SearchStrategy[NodeConfig]:
    node, cidr = ("192.168.0.2", "10.0.0.0/16") if family == 4 else ("fd00::2", "fd00:10::/64")
    return st.builds(NodeConfig, hostname=st.just("test-node"), ip_family=st.just(family),
                     node_ips=st.just((node,)), cluster_cidrs=st.sampled_from([(), (cidr,)]),
                     masquerade_all=st.booleans(), localhost_nodeports=st.booleans(),
                     nodeport_addresses=st.sampled_from([(), ("primary",)]),
                     masquerade_bit=st.integers(0, 31))


@pytest.mark.parametrize("family", [4, 6])
def test_iptables_restore_accepts_rendered_rulesets(module_netns: str, family: int) -> None:
    tool = "ip6tables-restore" if family == 6 else "iptables-restore"

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(state=states(family), cfg=configs(family))
    def check(state: ProxyState, cfg: NodeConfig) -> None:
        sh(module_netns, tool, "--test", input=render_ruleset(state, cfg))

    check()


def nat_chains(ns: str) -> dict[str, list[str]]:
    """The nat table as chain -> rules (built-in chains included), from iptables-save."""
    chains: dict[str, list[str]] = {}
    for line in sh(ns, "iptables-save", "-t", "nat").splitlines():
        if line.startswith(":"):
            chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chains.setdefault(line.split()[1], []).append(line)
    return chains


@pytest.fixture
def two_netns() -> Iterator[tuple[str, str]]:
    with scratch_namespace("ipt") as a, scratch_namespace("ipt") as b:
        yield a, b


def test_partial_syncs_end_where_a_full_sync_would(two_netns: tuple[str, str]) -> None:
    """After any sequence of partial syncs, the kernel holds exactly what a fresh full sync writes."""
    incremental, reference = two_netns
    cfg = NodeConfig(hostname="test-node", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/16",))

    @settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
    @given(steps=st.lists(states(4), min_size=2, max_size=3))
    def check(steps: list[ProxyState]) -> None:
        dp = IptablesDataplane(cfg, netns=incremental)
        dp.cleanup()
        dp.sync(steps[0])
        for before, after in zip(steps, steps[1:], strict=False):
            changed = {k for k in before.services.keys() | after.services.keys()
                       if before.services.get(k) != after.services.get(k)}
            assert not dp.sync(after, changed).full
            fresh = IptablesDataplane(cfg, netns=reference)
            fresh.cleanup()
            fresh.sync(after)
            assert nat_chains(incremental) == nat_chains(reference)

    check()
