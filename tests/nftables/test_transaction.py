"""Transactions on the text level: what a partial sync sends for a change (no kernel needed)."""

from __future__ import annotations

from svcproxy.dataplane.nftables.render import BlockCache
from svcproxy.dataplane.nftables.transaction import Kernel, desired_elements, plan_partial

from .helpers import CFG, service


def kernel_with(cache: BlockCache, *services) -> Kernel:
    """A Kernel record as after a full sync of services."""
    rules = [cache.service(s, "") for s in services]
    k = Kernel(exists=True)
    for r in rules:
        k.chains.update({name: c.rules for name, c in r.chains.items()})
        k.sets.update(r.sets)  # name -> declaration
    k.elements = desired_elements(CFG, (r.elements for r in rules))
    return k


def test_one_endpoint_change_touches_only_that_services_chains() -> None:
    cache = BlockCache(CFG)
    a, b = service("a", "172.30.0.1", ["10.0.1.1"]), service("b", "172.30.0.2", ["10.0.1.2", "10.0.1.3"])
    kernel = kernel_with(cache, a, b)
    old_b = cache.service(b, "")
    b2 = service("b", "172.30.0.2", ["10.0.1.2", "10.0.1.4"])
    plan = plan_partial(CFG, kernel, [(old_b, cache.service(b2, ""))])
    text = plan.tx.text()
    assert "/a/" not in text
    assert "element" not in text  # the same VIP, the same verdicts
    lines = text.splitlines()
    # kube-proxy 1.36: the service chain's one rule is rewritten; no endpoint chains to make
    svc_chain = next(n for n in old_b.chains if n.startswith("service-"))
    assert lines == [f"flush chain ip kube-proxy {svc_chain}",
                     f"add rule ip kube-proxy {svc_chain} meta l4proto tcp dnat ip addr . port to "
                     "numgen random mod 2 map { 0 : 10.0.1.2 . 8080, 1 : 10.0.1.4 . 8080 }"]
    assert plan.stale_chains == []


def test_one_endpoint_change_with_affinity_swaps_its_endpoint_chain() -> None:
    cache = BlockCache(CFG)
    b = service("b", "172.30.0.2", ["10.0.1.2", "10.0.1.3"], session_affinity_timeout=600)
    kernel = kernel_with(cache, b)
    old_b = cache.service(b, "")
    b2 = service("b", "172.30.0.2", ["10.0.1.2", "10.0.1.4"], session_affinity_timeout=600)
    plan = plan_partial(CFG, kernel, [(old_b, cache.service(b2, ""))])
    lines = plan.tx.text().splitlines()
    assert sum(line.startswith("add chain") for line in lines) == 1  # the new endpoint's chain
    assert sum(line.startswith("add set") for line in lines) == 1  # and its affinity set
    gone = next(n for n in old_b.chains if n.endswith("__10.0.1.3/8080"))
    assert [line.split()[-1] for line in lines if line.startswith("flush chain")] == [
        next(n for n in old_b.chains if n.startswith("service-")), gone]
    assert plan.stale_chains == [gone]
    assert plan.stale_sets == [gone.replace("endpoint-", "affinity-", 1)]


def test_losing_all_endpoints_moves_the_vip_to_the_reject_map() -> None:
    cache = BlockCache(CFG)
    a = service("a", "172.30.0.1", ["10.0.1.1"], node_port=30001)
    kernel = kernel_with(cache, a)
    plan = plan_partial(CFG, kernel, [(cache.service(a, ""), cache.service(service("a", "172.30.0.1", [],
                                                                                    node_port=30001), ""))])
    text = plan.tx.text()
    assert "delete element ip kube-proxy service-ips { 172.30.0.1 . tcp . 80 }" in text
    assert 'add element ip kube-proxy no-endpoint-services { 172.30.0.1 . tcp . 80 comment "ns1/a:p" : goto reject-chain }' in text
    assert "delete element ip kube-proxy service-nodeports { tcp . 30001 }" in text
    assert "cluster-ips" not in text  # still a ClusterIP
    assert len(plan.stale_chains) == 2 and "add rule" not in text  # service-, external-


def test_an_address_claimed_by_another_service_is_left_alone() -> None:
    cache = BlockCache(CFG)
    a = service("a", "172.30.0.1", ["10.0.1.1"])
    kernel = kernel_with(cache, a)
    dup = service("dup", "172.30.0.1", ["10.0.1.9"])  # same ClusterIP and port: bad input
    plan = plan_partial(CFG, kernel, [(None, cache.service(dup, ""))])
    assert "element" not in plan.tx.text()
