"""The dual-stack lab: every node, pod and the outside client with both families, one
`svcproxy run` per node serving both, `lab curl -6`. The plan parts need no root; the lab
itself runs in namespaces with real traffic."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from svcproxy.lab import Lab, LabError, make_plan, wiring
from svcproxy.lab.plan import Names, manifest_text, twin6
from svcproxy.lab.proxies import run_argv
from svcproxy.lab.targets import resolve
from svcproxy.model.load import load_text

from .test_lifecycle import leftovers, need_dataplane, svcproxy

DUAL = Path(__file__).resolve().parents[2] / "examples" / "dual-stack"
IPV4_ONLY = Path(__file__).resolve().parents[2] / "examples" / "cluster"


def test_twins_read_like_their_ipv4_address() -> None:
    assert twin6("10.0.1.10") == "fd00:10:0:1::10"
    assert twin6("192.168.0.2") == "fd00:192:168::2"


def test_manifests_with_ipv6_make_a_dual_stack_plan() -> None:
    plan = make_plan([DUAL])
    assert plan.dual_stack
    assert [(n.ip, n.ip6, n.pod_cidr6) for n in plan.nodes] == [
        ("192.168.0.2", "fd00:192:168::2", "fd00:10:0:1::/64"), ("192.168.0.3", "fd00:192:168::3", "fd00:10:0:2::/64")]
    assert {(p.ip, p.ip6) for p in plan.pods} == {("10.0.1.10", "fd00:10:0:1::10"), ("10.0.2.10", "fd00:10:0:2::10"),
                                                  ("10.0.1.30", "fd00:10:0:1::30")}
    assert not make_plan([IPV4_ONLY]).dual_stack
    assert make_plan([IPV4_ONLY], dual_stack=True).nodes[0].ip6 == "fd00:192:168::2"
    # the proxies see each node with both InternalIPs and run with a node IP and pod CIDR per family
    nodes_doc = manifest_text([DUAL], plan.nodes).split("---")[0]
    assert "fd00:192:168::2" in nodes_doc and "192.168.0.2" in nodes_doc
    argv = run_argv(plan.nodes[0], "iptables", Path("/m"))
    assert argv.count("--node-ip") == 2 and "fd00:10::/48" in argv and "--ip-family" not in argv


def test_an_ipv6_endpoint_without_an_ipv4_twin_is_named(tmp_path: Path) -> None:
    text = (DUAL / "web.yaml").read_text().replace('"fd00:10:0:2::10"', '"fd00:10:0:2::99"')
    (tmp_path / "web.yaml").write_text(text)
    with pytest.raises(LabError, match=r"EndpointSlice default/web-v6: endpoints\[1\].addresses: fd00:10:0:2::99 "
                                       r"is no pod's IPv6 address"):
        make_plan([tmp_path])


def test_wiring_and_targets_over_ipv6() -> None:
    plan = make_plan([DUAL])
    names = Names("dst")
    n1, n2 = plan.nodes
    cmds = wiring.node(names, n1, plan.nodes)
    assert "addr add fd00:192:168::2/64 dev dst-up nodad" in cmds
    assert "route add fd00:10:0:2::/64 via fd00:192:168::3" in cmds
    assert "route add fd00:192:168:100::/64 via fd00:192:168::2" in wiring.outside(names, n1)
    pod = next(p for p in plan.pods if p.ip == "10.0.1.10")
    assert "route add default via fd00:10:0:1::1" in wiring.pod(names, n1, pod)
    services = load_text((DUAL / "web.yaml").read_text()).services
    t = resolve(services, "web", outside=False, nodes=list(plan.nodes), family=6)
    assert (t.ip, t.port) == ("fd00:172:30::10", 80)
    t = resolve(services, "web", outside=True, nodes=list(plan.nodes), family=6)
    assert (t.ip, t.port, t.kind) == ("fd00:192:168::2", 30080, "nodeport")
    v4only = load_text((IPV4_ONLY / "web.yaml").read_text()).services
    with pytest.raises(LabError, match="no IPv6 ClusterIP"):
        resolve(v4only, "web", outside=False, nodes=list(plan.nodes), family=6)


@pytest.mark.kernel
@pytest.mark.parametrize("mode", ["iptables", "nftables", "userspace"])
def test_dual_stack_lab_serves_both_families(mode: str, lab_dir: Path, cleanup_prefix: list[str]) -> None:
    need_dataplane(mode)
    prefix = f"ds{mode[:2]}"
    cleanup_prefix.append(prefix)
    lab = Lab.up([DUAL], mode=mode, prefix=prefix)
    assert lab.dual_stack
    # one svcproxy run per node, serving both families
    for node in lab.nodes:
        ns = lab.node_ns(node)
        procs = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        assert len(procs) == 1, procs

    for family, node_ip in ((4, "192.168.0.2"), (6, "fd00:192:168::2")):
        # NodePort from outside: both pods, over this family, masqueraded (kernel modes)
        t = lab.target("web", "outside", family=family)
        assert t.ip == node_ip
        probes = lab.probe("outside", t.ip, t.port, count=20)
        assert all(p.ok for p in probes), [p for p in probes if not p.ok]
        assert {p.pod_ip for p in probes} == ({"10.0.1.10", "10.0.2.10"} if family == 4
                                              else {"fd00:10:0:1::10", "fd00:10:0:2::10"})
        # the ClusterIP from a pod, TCP and UDP
        t = lab.target("web", "web-1-10", family=family)
        assert all(p.ok for p in lab.probe("web-1-10", t.ip, t.port, count=10))
        t = lab.target("web:dns", "web-1-10", udp=True, family=family)
        assert all(p.ok for p in lab.probe("web-1-10", t.ip, t.port, udp=True, count=5))
        # eTP=Local: the client's own address reaches the pod (userspace relays, so there the node's)
        t = lab.target("local-web", "outside", family=family)
        probes = lab.probe("outside", t.ip, t.port, count=5)
        assert all(p.ok for p in probes), probes
        if mode != "userspace":
            assert {p.source_ip for p in probes} == {"192.168.0.100" if family == 4 else "fd00:192:168::100"}
        # no endpoints: refused, not dropped (an IPv6 refusal of a SYN shows at its 1 s retry)
        t = lab.target("empty", "web-1-10", family=family)
        assert [p.error for p in lab.probe("web-1-10", t.ip, t.port, count=2, timeout=2.5)] == ["refused"] * 2

    # the CLI says the same, with -6
    out = svcproxy("lab", "curl", "web", "--from", "outside", "-6", "-n", "10", "--prefix", prefix).stdout
    assert "fd00:10:0:1::10" in out and "fd00:192:168::2]:30080" in out
    st = json.loads(svcproxy("lab", "status", "--prefix", prefix, "--output", "json").stdout)
    assert st["dual_stack"] and st["nodes"][0]["ip6"] == "fd00:192:168::2"
    lab.down()
    assert leftovers(prefix, lab_dir) == ([], [])
