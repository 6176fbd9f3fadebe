"""ebpf mode's life on a node: a restarted daemon adopts the pinned programs and maps without a
moment of unbalanced connections; cleanup removes links, programs, maps and pins, and leaves
another tool's program on the same cgroup alone."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from svcproxy.dataplane.ebpf import build

from .conftest import ENDPOINTS, Node
from .helpers import VIP, service, state_of

pytestmark = pytest.mark.kernel

FOREIGN = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("cgroup/connect4") int foreign_connect4(struct bpf_sock_addr *ctx) { return 1; }
char _license[] SEC("license") = "GPL";
"""


def programs(cgroup: Path) -> list[str]:
    """The names of the programs attached to cgroup (bpftool)."""
    out = subprocess.run(["bpftool", "cgroup", "show", str(cgroup)], capture_output=True, text=True, check=True).stdout
    return sorted(line.split()[-1] for line in out.splitlines()[1:] if line.strip())


def test_restart_adopts_the_pinned_maps_with_no_gap(inside: Node) -> None:
    state = state_of(service("web", VIP, ENDPOINTS))
    first = inside.dataplane()
    first.sync(state)
    results: list[list[dict]] = []
    load = threading.Thread(target=lambda: results.append(inside.client("tcp", VIP, 80, 200, pause=0.005)))
    load.start()
    time.sleep(0.3)  # the client is connecting by now (200 connections take over a second)
    first.close()  # the daemon is gone; its pins hold everything in place
    second = inside.dataplane()
    second.sync(state)
    assert second.loaded is not None and second.loaded.adopted
    load.join()
    assert all("served" in r for r in results[0]), [r for r in results[0] if "served" not in r]
    assert {r["served"] for r in results[0]} == set(ENDPOINTS)
    assert inside.run("conntrack", "-L", "-p", "tcp", "-d", VIP, check=False).stdout.count("dport=80") == 0
    assert len(programs(inside.cgroup)) == 4  # the links got the new programs; none were added
    # the adopted record is right: a change after the restart is applied as such
    second.sync(state_of(service("web", VIP, ENDPOINTS[:1])), changed={"ns1/web"})
    assert {r["served"] for r in inside.client("tcp", VIP, 80, 10)} == {ENDPOINTS[0]}


def test_adoption_removes_what_the_state_no_longer_has(inside: Node) -> None:
    first = inside.dataplane()
    first.sync(state_of(service("web", VIP, ENDPOINTS), service("old", "172.30.0.99", ENDPOINTS[:1])))
    first.close()
    second = inside.dataplane()
    second.sync(state_of(service("web", VIP, ENDPOINTS[1:])))
    served = {r.get("served", r.get("error")) for r in inside.client("tcp", VIP, 80, 30)}
    assert served == set(ENDPOINTS[1:]), served
    # the old Service's key is gone from the map (the connection is not rewritten by BPF);
    # nftables has no rule for it either, so nothing answers: the address is unknown
    from svcproxy.dataplane.ebpf import bpfsys, maps
    keys = set(bpfsys.keys(second.loaded.maps["services"], maps.SVC_KEY_SIZE))  # type: ignore[union-attr]
    assert keys == {maps.svc_key(VIP, 80, "TCP")}
    assert len(list(bpfsys.keys(second.loaded.maps["slots"], maps.SLOT_KEY_SIZE))) == 2  # type: ignore[union-attr]


def test_cleanup_removes_everything_and_leaves_other_programs(inside: Node, tmp_path: Path) -> None:
    src = tmp_path / "foreign.c"
    src.write_text(FOREIGN)
    obj = tmp_path / "foreign.o"
    subprocess.run(build.compile_command(src, obj), check=True)
    foreign_pin = f"{inside.pins}-foreign"
    subprocess.run(["bpftool", "prog", "load", str(obj), foreign_pin, "type", "cgroup/connect4"], check=True)
    try:
        subprocess.run(["bpftool", "cgroup", "attach", str(inside.cgroup), "connect4", "pinned", foreign_pin, "multi"],
                       check=True)
        dp = inside.dataplane()
        dp.sync(state_of(service("web", VIP, ENDPOINTS)))
        assert programs(inside.cgroup) == sorted(["foreign_connect4", "svcproxy_connect4", "svcproxy_sendmsg4",
                                                  "svcproxy_recvmsg4", "svcproxy_getpeername4"])
        # both run: ours rewrites, the foreign one lets everything through
        assert {r["served"] for r in inside.client("tcp", VIP, 80, 20)} <= set(ENDPOINTS)
        dp.cleanup()
        assert programs(inside.cgroup) == ["foreign_connect4"]
        assert not inside.pins.exists()
        assert "kube-proxy" not in inside.run("nft", "list", "tables").stdout
        dp.cleanup()  # twice is fine
    finally:
        subprocess.run(["bpftool", "cgroup", "detach", str(inside.cgroup), "connect4", "pinned", foreign_pin],
                       check=False)
        Path(foreign_pin).unlink(missing_ok=True)
    assert programs(inside.cgroup) == []


def test_pinned_maps_of_another_layout_are_replaced(inside: Node, tmp_path: Path) -> None:
    """An upgrade that changed a map's layout: the old pinned map cannot be reused, so a new
    one replaces it, and the full sync fills it."""
    first = inside.dataplane()
    first.sync(state_of(service("web", VIP, ENDPOINTS)))
    first.close()
    src = tmp_path / "sock.c"
    src.write_text(build.SOURCE.read_text().replace("__uint(max_entries, 65536);", "__uint(max_entries, 4096);"))
    obj = tmp_path / "sock.o"
    subprocess.run(build.compile_command(src, obj), check=True)
    second = inside.dataplane()
    second.object_path = obj
    second.sync(state_of(service("web", VIP, ENDPOINTS[:2])))
    assert {r["served"] for r in inside.client("tcp", VIP, 80, 20)} == set(ENDPOINTS[:2])
    assert len(programs(inside.cgroup)) == 4
