"""A host that cannot run ebpf mode gets an error naming what is missing and the mode to use
instead; the nftables part is programmed all the same, so outside traffic keeps working."""

from __future__ import annotations

from pathlib import Path

import pytest

from svcproxy.dataplane import RUN_MODES
from svcproxy.dataplane.ebpf import EbpfUnavailable, check_host, loader

from .conftest import ENDPOINTS, Node
from .helpers import VIP, service, state_of


def test_missing_pieces_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(loader.os, "geteuid", lambda: 1000)
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda p: False if str(p) == "/sys/kernel/btf/vmlinux" else real_exists(p))
    with pytest.raises(EbpfUnavailable) as e:
        check_host(tmp_path)
    msg = str(e.value)
    assert "privilege" in msg and "BTF" in msg and f"cgroup v2 hierarchy at {tmp_path}" in msg
    assert "--proxy-mode nftables" in msg


def test_ebpf_is_a_run_mode() -> None:
    assert "ebpf" in RUN_MODES


@pytest.mark.kernel
def test_no_cgroup_v2_fails_the_sync_but_programs_nftables(inside: Node, tmp_path: Path) -> None:
    dp = inside.dataplane()
    dp.cgroup = tmp_path  # not a cgroup v2 directory
    with pytest.raises(EbpfUnavailable, match="cgroup v2"):
        dp.sync(state_of(service("web", VIP, ENDPOINTS)))
    assert "kube-proxy" in inside.run("nft", "list", "tables").stdout
    assert {r.get("served") for r in inside.client("tcp", VIP, 80, 5)} <= set(ENDPOINTS)  # via nftables
    assert not inside.pins.exists()
