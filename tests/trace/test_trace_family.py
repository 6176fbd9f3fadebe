"""`svcproxy trace -f` on dual-stack manifests renders the rules of the packet's family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from svcproxy.cli import main

DUAL = Path(__file__).resolve().parents[2] / "examples" / "dual-stack"
NODE = ["--hostname-override", "test-node", "--node-ip", "192.168.0.2", "--node-ip", "fd00:192:168::2",
        "--cluster-cidr", "10.0.0.0/8", "--cluster-cidr", "fd00:10::/48"]


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
@pytest.mark.parametrize(("source", "destination", "want"), [
    ("192.168.0.100", "192.168.0.2", ["10.0.1.10:8080", "10.0.2.10:8080"]),
    ("fd00:192:168::100", "fd00:192:168::2", ["[fd00:10:0:1::10]:8080", "[fd00:10:0:2::10]:8080"]),
])
def test_trace_follows_the_destination_family(mode: str, source: str, destination: str, want: list[str]) -> None:
    res = CliRunner().invoke(main, ["trace", "-f", str(DUAL), "--proxy-mode", mode, *NODE, "--source", source,
                                    "--destination", destination, "--port", "30080", "--output", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["endpoints"] == want and doc["masquerade"] is True


def test_an_explicit_family_still_wins() -> None:
    res = CliRunner().invoke(main, ["trace", "-f", str(DUAL), *NODE, "--ip-family", "IPv4", "--source",
                                    "fd00:192:168::100", "--destination", "fd00:192:168::2", "--port", "30080"])
    assert res.exit_code != 0 or "10.0.1.10" not in res.output
