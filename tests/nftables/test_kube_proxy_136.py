"""The kube-proxy layout against kube-proxy 1.36.2's own expectation: TestOverallNFTablesRules'
transaction (data/kube-proxy-1.36-overall.nft) for its objects (data/overall-136: the
conformance "overall" manifests with the test's nodeNames). Same chains, same rules in the same order, same sets, maps and elements; and the
tracer reads kube-proxy's text, and the kernel's listing of it, with the same outcomes."""

from __future__ import annotations

import json
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from svcproxy.cli import main
from svcproxy.lab.netns import scratch_namespace

ROOT = Path(__file__).resolve().parents[2]
KUBE_PROXY = Path(__file__).parent / "data" / "kube-proxy-1.36-overall.nft"
MANIFESTS = ROOT / "tests" / "conformance" / "manifests"
FLAGS = ["--hostname-override", "test-node", "--node-ip", "192.168.0.2", "--cluster-cidr", "10.0.0.0/8",
         "--nodeport-addresses", "192.168.0.2/32"]
Table = tuple[dict[str, list[str]], dict[str, set[str]], set[str]]  # chain rules, elements, containers


def ours() -> str:
    files = ["-f", str(Path(__file__).parent / "data" / "overall-136"),
             "-f", str(MANIFESTS / "cluster_ip_general" / "servicecidr.yaml")]
    r = CliRunner().invoke(main, ["render", *files, *FLAGS, "--proxy-mode", "nftables"])
    assert r.exit_code == 0, r.output
    return r.output


def _norm(text: str) -> str:
    return re.sub(r"\s+,", ",", " ".join(text.split()))


def from_commands(text: str) -> Table:
    """kube-proxy's `add ...` lines: rules per chain (in order), elements per set/map."""
    rules: dict[str, list[str]] = defaultdict(list)
    elements: dict[str, set[str]] = defaultdict(set)
    containers: set[str] = set()
    for line in text.splitlines():
        words = line.split(maxsplit=5)
        if line.startswith("add rule "):
            rules[words[4]].append(_norm(words[5]))
        elif line.startswith("add chain "):
            rules.setdefault(words[4], [])
        elif line.startswith(("add set ", "add map ")):
            containers.add(words[4])
        elif line.startswith("add element "):
            elements[words[4]].add(_norm(words[5].strip()[1:-1]))
    return dict(rules), dict(elements), containers


def from_blocks(text: str) -> Table:
    """Our `nft list`-shaped blocks, the same way."""
    rules: dict[str, list[str]] = {}
    elements: dict[str, set[str]] = defaultdict(set)
    containers: set[str] = set()
    for kind, name, body in re.findall(r"\n\t(chain|set|map) (\S+) \{\n(.*?)\n\t\}", text, re.S):
        if kind == "chain":
            rules[name] = [_norm(r) for r in body.splitlines()
                           if not r.strip().startswith(("type ", "comment "))]
            continue
        containers.add(name)
        m = re.search(r"elements = \{ (.*) \}", body, re.S)
        if m:
            elements[name] = {_norm(e) for e in m.group(1).split(",\n")}
    return rules, dict(elements), containers


def test_the_table_is_kube_proxy_136s() -> None:
    want_rules, want_elements, want_containers = from_commands(KUBE_PROXY.read_text())
    got_rules, got_elements, got_containers = from_blocks(ours())
    assert got_containers == want_containers
    assert set(got_rules) == set(want_rules)
    for chain, rules in want_rules.items():
        assert got_rules[chain] == rules, chain
    assert got_elements == want_elements


def _loadable(text: str) -> str:
    """kube-proxy's expectation is sorted by kind, not in an order nft accepts: declarations
    first, then rules and elements."""
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    first = [ln for ln in lines if ln.startswith(("add table", "add chain", "add set", "add map"))]
    return "\n".join(first + [ln for ln in lines if ln not in first]) + "\n"


FLOWS = [  # (source, destination, port) -> (endpoints, masquerade), read off kube-proxy's rules
    (("10.0.0.2", "172.30.0.41", 80), (["10.180.0.1:80"], False)),
    (("10.180.0.1", "172.30.0.41", 80), (["10.180.0.1:80"], True)),  # hairpin
    (("10.0.0.2", "172.30.0.44", 80), (["10.180.0.4:80", "10.180.0.5:80"], False)),
    (("203.0.113.2", "172.30.0.41", 80), (["10.180.0.1:80"], True)),  # from outside the cluster
    (("10.0.0.2", "172.30.0.45", 80), (["10.180.0.3:80"], False)),  # affinity
    (("203.0.113.2", "192.168.0.2", 3003), (["10.180.0.3:80"], True)),  # NodePort
]


def trace(rules: Path, src: str, dst: str, port: int) -> dict:
    r = CliRunner().invoke(main, ["trace", "--rules", str(rules), "--source", src, "--destination", dst,
                                  "--port", str(port), "--local-address", "192.168.0.2", "--output", "json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


@pytest.mark.parametrize(("flow", "want"), FLOWS)
def test_tracer_on_the_136_table(tmp_path: Path, flow: tuple, want: tuple) -> None:
    """Our render (the table kube-proxy 1.36 writes, test above): numgen map DNAT gives each
    endpoint 1/N, @hairpin-connections decides the hairpin masquerade."""
    path = tmp_path / "ours.nft"
    path.write_text(ours())
    out = trace(path, *flow)
    assert (out["endpoints"], out["masquerade"]) == want
    if len(want[0]) == 2:
        assert [o["probability"] for o in out["outcomes"]] == [0.5, 0.5]


@pytest.mark.kernel
def test_tracer_reads_the_kernels_listings_of_kube_proxy_136s_table(tmp_path: Path) -> None:
    with scratch_namespace("kp136") as ns:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=_loadable(KUBE_PROXY.read_text()),
                       text=True, check=True)
        listing = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"], capture_output=True,
                                 text=True, check=True).stdout
        as_json = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset"], capture_output=True,
                                 text=True, check=True).stdout
    assert "dnat ip to numgen random mod 2 map { 0 : 10.180.0.4 . 80, 1 : 10.180.0.5 . 80 }" in listing
    (tmp_path / "listing.nft").write_text(listing)
    (tmp_path / "listing.json").write_text(as_json)
    for path in (tmp_path / "listing.nft", tmp_path / "listing.json"):
        for flow, want in FLOWS:
            out = trace(path, *flow)
            assert (out["endpoints"], out["masquerade"]) == want, (path.name, flow)
