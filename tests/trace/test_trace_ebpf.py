"""`svcproxy trace` in ebpf mode from manifests: a socket on this node (its addresses, its pods)
is rewritten at connect() before any rule; a packet from elsewhere meets the nftables maps
layout's DNAT."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from svcproxy.cli.trace import trace

CLUSTER = Path(__file__).parents[2] / "examples" / "cluster"
ARGS = ["-f", str(CLUSTER), "--proxy-mode", "ebpf", "--hostname-override", "test-node", "--node-ip", "192.168.0.2",
        "--cluster-cidr", "10.0.0.0/8", "--destination", "172.30.0.10", "--port", "80", "--output", "json"]


def _trace(*extra: str) -> dict:
    result = CliRunner().invoke(trace, [*ARGS, *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_node_and_its_pods_are_balanced_at_connect_without_nat() -> None:
    for source in ("192.168.0.2", "10.0.1.20"):  # the node; a pod in test-node's podCIDR
        out = _trace("--source", source)
        assert out["path"][:2] == ["connect() (BPF)", "bpf/cgroup/connect4"], source
        assert out["masquerade"] is False and len(out["endpoints"]) == 3
        assert abs(sum(o["probability"] for o in out["outcomes"]) - 1) < 1e-9
        assert not any("DNAT" in step for step in out["path"]), "the rules see the endpoint already"


def test_a_pod_on_another_node_meets_the_rules() -> None:
    out = _trace("--source", "10.0.2.20")  # test-node-2's podCIDR
    assert "connect() (BPF)" not in out["path"]
    assert any("dnat" in step.lower() for step in out["path"]) and len(out["endpoints"]) == 3


def test_no_endpoints_is_refused_at_connect() -> None:
    result = CliRunner().invoke(trace, [*ARGS[:-6], "--destination", "172.30.0.50", "--port", "80", "--output",
                                        "json", "--source", "192.168.0.2"])
    out = json.loads(result.stdout)
    assert out["verdict"] == "REJECT" and "ECONNREFUSED" in out["path"][-1]


def test_the_picture_draws_the_socket_step(tmp_path: Path) -> None:
    result = CliRunner().invoke(trace, [*ARGS[:-2], "--output", "svg", "--source", "192.168.0.2"])
    assert result.exit_code == 0 and "connect() (BPF)" in result.stdout and "cgroup/connect4" in result.stdout
