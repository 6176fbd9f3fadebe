"""A periodic full sync repairs what someone changed by hand in our table (drift)."""

from __future__ import annotations

import pytest

from svcproxy.dataplane import ApplyError
from svcproxy.dataplane.nftables import NftablesDataplane, names
from svcproxy.state import ServicePortName

from .conftest import Netns
from .helpers import CFG, service, state_of

pytestmark = pytest.mark.kernel

A = service("a", "172.30.0.1", ["10.0.1.10"])
B = service("b", "172.30.0.2", ["10.0.1.10", "10.0.1.11"], node_port=30002)


def chain_of(name: str) -> str:
    return f"service-{names.port_base(ServicePortName('ns1', name, 'p', 'TCP'))}"


def rules(ns: Netns, chain: str) -> list[str]:
    text = ns.nft("list", "chain", "ip", "kube-proxy", chain).stdout
    return [ln.strip() for ln in text.splitlines()[2:-2] if ln.strip() and ln.strip() != "}"]


def test_periodic_full_sync_rewrites_a_hand_flushed_chain(inside: Netns) -> None:
    dp = NftablesDataplane(CFG)
    dp.sync(state_of(A, B))
    want = rules(inside, chain_of("b"))
    assert any("numgen random mod 2" in r for r in want)
    inside.nft("flush", "chain", "ip", "kube-proxy", chain_of("b"))
    assert rules(inside, chain_of("b")) == []
    dp.sync(state_of(A, B), ["ns1/a"])  # a partial sync trusts its record: no repair yet
    assert rules(inside, chain_of("b")) == []
    dp.sync(state_of(A, B), None)  # the periodic full sync looks
    assert rules(inside, chain_of("b")) == want


def test_full_sync_after_the_table_was_deleted_by_hand(inside: Netns) -> None:
    dp = NftablesDataplane(CFG)
    dp.sync(state_of(A, B))
    before = inside.nft("list", "table", "ip", "kube-proxy").stdout
    inside.nft("delete", "table", "ip", "kube-proxy")
    try:
        dp.sync(state_of(A, B), None)
    except ApplyError:  # at worst one failed attempt; the retry must rebuild everything
        dp.sync(state_of(A, B), None)
    assert inside.nft("list", "table", "ip", "kube-proxy").stdout == before


def test_large_tables_check_names_only(inside: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    import svcproxy.dataplane.nftables as nft_dp

    monkeypatch.setattr(nft_dp, "DRIFT_CHECK_MAX_CHAINS", 1)
    dp = NftablesDataplane(CFG)
    dp.sync(state_of(A, B))
    before = inside.nft("list", "table", "ip", "kube-proxy").stdout
    inside.nft("delete", "table", "ip", "kube-proxy")
    dp.sync(state_of(A, B), None)  # names differ (all gone): reprogrammed without a failed attempt
    assert inside.nft("list", "table", "ip", "kube-proxy").stdout == before


def test_large_tables_repair_a_flushed_fixed_chain(inside: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above DRIFT_CHECK_MAX_CHAINS the fixed chains are rewritten only when their rule counts
    (read by a netlink dump per chain) differ from what was written."""
    import svcproxy.dataplane.nftables as nft_dp

    monkeypatch.setattr(nft_dp, "DRIFT_CHECK_MAX_CHAINS", 1)
    dp = NftablesDataplane(CFG)
    dp.sync(state_of(A, B))
    before = inside.nft("list", "table", "ip", "kube-proxy").stdout
    dp.sync(state_of(A, B), None)  # nothing changed by hand: the fixed chains are not rewritten
    paths = [path for path, _, _ in dp.timings if path not in ("render", "wait")]
    assert paths and all(path == "netlink" for path in paths)
    inside.nft("flush", "chain", "ip", "kube-proxy", "services")
    assert inside.nft("list", "table", "ip", "kube-proxy").stdout != before
    dp.sync(state_of(A, B), None)
    assert inside.nft("list", "table", "ip", "kube-proxy").stdout == before
