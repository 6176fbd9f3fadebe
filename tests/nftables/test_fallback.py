"""When the kernel refuses svcproxy's own netlink encoding (another kernel version may disagree
with it), the same transaction goes through nft, and nft is used from then on; a transaction
that nft refuses too is reported in nft's words."""

from __future__ import annotations

import pytest

from svcproxy.dataplane import ApplyError
from svcproxy.dataplane.nftables import NftablesDataplane, netlink
from svcproxy.dataplane.nftables.commands import AddRule, Tx

from .conftest import Netns
from .helpers import CFG, service, state_of

pytestmark = pytest.mark.kernel

A = service("a", "172.30.0.1", ["10.0.1.10"])
B = service("b", "172.30.0.2", ["10.0.1.10", "10.0.1.11"], node_port=30002)
B2 = service("b", "172.30.0.2", ["10.0.1.12"], node_port=30002)


def table(ns: Netns) -> str:
    return ns.nft("list", "table", "ip", "kube-proxy").stdout


def test_refused_encoding_falls_back_to_nft(inside: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = NftablesDataplane(CFG, use_netlink=False)
    reference.sync(state_of(A, B))
    want = table(inside)
    reference.sync(state_of(A, B2), ["ns1/b"])
    want_after = table(inside)
    reference.cleanup()
    # an encoder the kernel refuses: a dnat with an unknown NAT type (EINVAL)
    broken = netlink.expr("nat", netlink.u32(1, 99), netlink.u32(2, 2), netlink.u32(3, 1))
    monkeypatch.setattr(netlink.Compiler, "nat_numgen", property(lambda self: broken))  # every service chain
    dp = NftablesDataplane(CFG)
    dp.sync(state_of(A, B))
    assert not dp.use_netlink and table(inside) == want
    dp.sync(state_of(A, B2), ["ns1/b"])  # partial syncs go through nft too now
    assert [path for path, _, _ in dp.timings if path not in ("render", "wait")] == ["nft"]
    assert table(inside) == want_after


def test_a_transaction_nft_refuses_too_is_reported_in_its_words(inside: Netns) -> None:
    dp = NftablesDataplane(CFG)
    dp.sync(state_of(A))
    tx = Tx(CFG)
    tx.commands.append(AddRule("no-such-chain", "ip saddr 1.2.3.4"))
    with pytest.raises(ApplyError, match=r"nft refused.*no-such-chain|nft refused.*No such file.*netlink"):
        dp.io.run_tx(tx)
    assert dp.use_netlink  # the encoder was not at fault
