"""Generated bad and odd manifests (property-based, with hypothesis): nothing breaks, every bad
object is named, no rule text is built from unescaped input, the good objects are programmed.

Every example is the good web Service and its slice, plus a victim Service and slice that one to
three mutations have made bad or odd: wrong types, out-of-range numbers, bad addresses, huge
names, duplicate ports, unicode, and injection attempts (`"; -j ACCEPT`, a newline and a rule,
`} flush ruleset`) in names, port names, labels, annotations and node names. Each example goes
through the loader and both renderers, as `svcproxy run` does; then:
- nothing raises;
- the victim is either programmed or an error names it (kind, and its name where it has one);
- the web Service's rules are all there, unchanged;
- no line of either ruleset holds a marker planted in the input, except inside a quoted comment
  with nothing else of the input around it, and every iptables line has the restore format;
- a sample of the rulesets is loaded into a real kernel (iptables-restore, nft -f) in a scratch
  namespace, which must accept it.
The same manifests also go to a running `svcproxy run` in batches (daemon_batches), under load.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from svcproxy.config import NodeConfig
from svcproxy.dataplane.iptables.render import render_ruleset as render_iptables
from svcproxy.dataplane.nftables.render import render_ruleset as render_nftables
from svcproxy.lab.netns import scratch_namespace
from svcproxy.model import load_text
from svcproxy.state import build_state

from .harness import Pod, web_docs

MARK = "PWNED"
CFG = NodeConfig(hostname="test-node", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/8",))
INJECTIONS = [f'x"; -j ACCEPT #{MARK}', f"{MARK}\n-A INPUT -j ACCEPT", f"}} {MARK}; flush ruleset; {{",
              f"$({MARK})", f"`{MARK}`", f"{MARK}\r\nCOMMIT", f"a b {MARK}", f"{MARK}\x00", f"'{MARK}'",
              f"{MARK}\\", f"-{MARK}", f"{MARK}:80"]
ODD_STRINGS = ["", " ", "UPPER", "ünïcødé", "名前", "a" * 64, "a" * 300, "a" * 10_000, "-lead", "trail-",
               "a.b", "a_b", "0start", "\t", "🙂"]
BAD_IPS = ["1.2.3", "256.1.1.1", "::g", "10.0.0.1/24", " 10.0.0.1", "010.000.000.001", "fe80::1%eth0",
           "0.0.0.0", "::", "::ffff:10.0.0.1", "1.2.3.4.5", "localhost"]
NUMBERS = [-1, 0, 1, 65535, 65536, 2**31, 2**63, -2**63, 1.5, float("1e308")]
OTHERS = [None, True, False, [], {}, [1, 2], {"a": 1}, "80", "http"]
VALUES = st.one_of(st.sampled_from(INJECTIONS + ODD_STRINGS + BAD_IPS + NUMBERS + OTHERS),
                   st.text(max_size=40), st.integers(), st.lists(st.sampled_from(BAD_IPS + INJECTIONS), max_size=3))

# where a mutation may land (the victim Service is documents[2], its slice documents[3])
SERVICE_PATHS = [("metadata", "name"), ("metadata", "namespace"), ("metadata", "annotations", "note"),
                 ("metadata", "labels", "app"), ("spec", "type"), ("spec", "clusterIP"), ("spec", "clusterIPs"),
                 ("spec", "ports"), ("spec", "ports", 0, "port"), ("spec", "ports", 0, "name"),
                 ("spec", "ports", 0, "protocol"), ("spec", "ports", 0, "nodePort"), ("spec", "ports", 0, "targetPort"),
                 ("spec", "externalIPs"), ("spec", "loadBalancerSourceRanges"), ("spec", "sessionAffinity"),
                 ("spec", "sessionAffinityConfig", "clientIP", "timeoutSeconds"), ("spec", "externalTrafficPolicy"),
                 ("spec", "internalTrafficPolicy"), ("spec", "healthCheckNodePort"), ("status", "loadBalancer", "ingress"),
                 ("spec", "ipFamilies"), ("spec",), ("metadata",)]
SLICE_PATHS = [("metadata", "name"), ("metadata", "namespace"), ("metadata", "labels", "kubernetes.io/service-name"),
               ("addressType",), ("ports", 0, "port"), ("ports", 0, "name"), ("ports", 0, "protocol"), ("ports",),
               ("endpoints",), ("endpoints", 0, "addresses"), ("endpoints", 0, "addresses", 0),
               ("endpoints", 0, "conditions", "ready"), ("endpoints", 0, "nodeName"), ("endpoints", 0, "zone"),
               ("endpoints", 0, "hints", "forZones"), ("metadata", "annotations", "note")]


def victim(i: int) -> list[dict]:
    """A good LoadBalancer Service and slice, each example's own, before the mutations."""
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"victim-{i}", "namespace": "odd"},
           "spec": {"type": "LoadBalancer", "clusterIP": "172.30.1.1", "externalTrafficPolicy": "Cluster",
                    "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 31000},
                              {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 31001}],
                    "externalIPs": ["192.168.100.7"], "loadBalancerSourceRanges": ["192.168.0.0/24"]},
           "status": {"loadBalancer": {"ingress": [{"ip": "192.168.100.8"}]}}}
    sl = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
          "metadata": {"name": f"victim-{i}-abc", "namespace": "odd",
                       "labels": {"kubernetes.io/service-name": f"victim-{i}"}},
          "ports": [{"name": "http", "protocol": "TCP", "port": 8080}, {"name": "dns", "protocol": "UDP", "port": 5353}],
          "endpoints": [{"addresses": ["10.0.9.5"], "nodeName": "test-node", "zone": "z1",
                         "conditions": {"ready": True}}]}
    return [svc, sl]


def mutate(doc: dict, path: tuple, value: object) -> None:
    """Set doc[path] = value, making the containers on the way (a list index past the end appends)."""
    node: object = doc
    for key, nxt in zip(path, path[1:], strict=False):
        child = _get(node, key)
        if not isinstance(child, dict | list):
            child = [] if isinstance(nxt, int) else {}
            _set(node, key, child)
        node = child
    _set(node, path[-1], value)


def _get(node: object, key: object) -> object:
    if isinstance(node, dict):
        return node.get(key)
    if isinstance(node, list) and isinstance(key, int) and key < len(node):
        return node[key]
    return None


def _set(node: object, key: object, value: object) -> None:
    if isinstance(node, dict):
        node[key] = value
    elif isinstance(node, list) and isinstance(key, int):
        if key < len(node):
            node[key] = value
        else:
            node.append(value)


@st.composite
def examples(draw: st.DrawFn) -> tuple[list[dict], list[tuple]]:
    docs = victim(draw(st.integers(0, 10**6)))
    done = []
    for _ in range(draw(st.integers(1, 3))):
        which = draw(st.integers(0, 1))
        path = draw(st.sampled_from(SERVICE_PATHS if which == 0 else SLICE_PATHS))
        if path == ("spec", "ports") and draw(st.booleans()):
            value: object = [docs[0]["spec"]["ports"][0]] * 2  # duplicate ports
        else:
            value = draw(VALUES)
        mutate(docs[which], path, value)
        done.append((which, path, value))
    return docs, done


# -- the checks --------------------------------------------------------------------------------

IPTABLES_LINE = re.compile(r"\*(nat|filter|mangle|raw)|:[A-Z][A-Z0-9-]* (-|ACCEPT|DROP) \[\d+:\d+\]|-A [A-Z][A-Z0-9-]* .+"
                           r"|-X [A-Z][A-Z0-9-]*|COMMIT|#.*|")
NFT_COMMENT = re.compile(r'comment "[^"\\\n]*"')


class Finding(AssertionError):
    pass


def check_iptables(text: str) -> None:
    for n, line in enumerate(text.split("\n")):
        if not IPTABLES_LINE.fullmatch(line):
            raise Finding(f"iptables line {n + 1} is not restore format: {line[:200]!r}")
        if MARK in line:
            words = shlex.split(line)
            for i, w in enumerate(words):
                if MARK in w and (i == 0 or words[i - 1] != "--comment"):
                    raise Finding(f"iptables line {n + 1}: input outside a comment: {line[:200]!r}")


def check_nftables(text: str) -> None:
    if "\r" in text or "\x00" in text:
        raise Finding("nftables text holds a carriage return or NUL from the input")
    for n, line in enumerate(text.split("\n")):
        if MARK in NFT_COMMENT.sub("", line):
            raise Finding(f"nftables line {n + 1}: input outside a comment: {line[:200]!r}")


def named(victim_docs: list[dict], errors: list[str]) -> bool:
    """An error names the victim: by its name where it has a usable one, else by kind and field."""
    for doc, kind in zip(victim_docs, ("Service", "EndpointSlice"), strict=True):
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else None
        if isinstance(name, str) and name.isascii() and name.isprintable() and 0 < len(name) <= 60:
            if any(name in e for e in errors):
                return True
        elif any(kind in e for e in errors):
            return True
    return False


def one_example(docs: list[dict], base_iptables: set[str], base_nft: set[str], keep: list[tuple[str, str]] | None,
                ) -> str:
    """Check one example; returns how the victim ended (programmed / named / both)."""
    text = json.dumps({"apiVersion": "v1", "kind": "List", "items": web_docs([Pod("10.0.1.10", "test-node")]) + docs})
    objects = load_text(text, "generated")
    state = build_state(objects, CFG)
    ipt, nft = render_iptables(state, CFG), render_nftables(state, CFG)
    check_iptables(ipt)
    check_nftables(nft)
    if missing := base_iptables - set(ipt.splitlines()):
        raise Finding(f"the web Service lost iptables rules: {sorted(missing)[:3]}")
    if missing := base_nft - nft_lines(nft):
        raise Finding(f"the web Service lost nftables rules: {sorted(missing)[:3]}")
    programmed = any(k.startswith("odd/") or "victim" in k for k in state.services) or _skipped_by_design(docs[0])
    errors = list(state.errors)
    is_named = named(docs, errors)
    if not programmed and not is_named:
        raise Finding(f"the victim was neither programmed nor named; errors: {errors[:3]}")
    if keep is not None:
        keep.append((ipt, nft))
    return "both" if programmed and is_named else "programmed" if programmed else "named"


def _skipped_by_design(svc: object) -> bool:
    """A Service kube-proxy leaves alone on purpose (ExternalName, headless): nothing to name."""
    spec = svc.get("spec") if isinstance(svc, dict) else None
    if not isinstance(spec, dict):
        return False
    ips = spec.get("clusterIPs") if spec.get("clusterIPs") else [spec.get("clusterIP")]
    if spec.get("type") == "ExternalName" or (isinstance(ips, list) and "None" in ips):
        return True
    # an IPv6-only Service on this IPv4 node: the other family's proxier programs it
    return isinstance(ips, list) and bool(ips) and all(isinstance(ip, str) and ":" in ip for ip in ips)


def web_lines() -> tuple[set[str], set[str]]:
    """The lines of the web Service alone (what every example must still hold)."""
    state = build_state(load_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                              "items": web_docs([Pod("10.0.1.10", "test-node")])})), CFG)
    ipt, nft = render_iptables(state, CFG), render_nftables(state, CFG)
    return ({x for x in ipt.splitlines() if "default/web" in x or "10.0.1.10" in x},
            {x for x in nft_lines(nft) if "default/web" in x or "10.0.1.10" in x})


def nft_lines(text: str) -> set[str]:
    """The ruleset's lines, a map's elements one per line without the braces around them (which
    element comes last depends on the other Services)."""
    return {x.replace("elements = {", "").strip().rstrip(",} ").strip() for x in text.splitlines()}


def kernel_accepts(rulesets: list[tuple[str, str]]) -> int:
    """Load each (iptables, nftables) pair into a scratch namespace's kernel; returns how many."""
    with scratch_namespace("relbad") as ns:
        for ipt, nft in rulesets:
            for argv, text in ((["iptables-restore", "--noflush"], ipt), (["nft", "-f", "-"], nft)):
                p = subprocess.run(["ip", "netns", "exec", ns, *argv], input=text, capture_output=True, text=True)
                if p.returncode:
                    raise Finding(f"the kernel refused a rendered ruleset ({argv[0]}): {p.stderr.strip()[:300]}")
            subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "ip", "kube-proxy"], check=True)
    return len(rulesets)


def generated(count: int, progress: Callable[[str], None] = print, kernel_every: int = 100) -> dict:
    base_ipt, base_nft = web_lines()
    outcomes = {"programmed": 0, "named": 0, "both": 0}
    keep: list[tuple[str, str]] = []
    seen = [0]
    t0 = time.monotonic()
    corpus: list[list[dict]] = []

    @settings(max_examples=count, deadline=None, database=None, derandomize=True,
              phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))
    @given(examples())
    def check(example: tuple[list[dict], list[tuple]]) -> None:
        docs, _ = example
        seen[0] += 1
        outcomes[one_example(copy.deepcopy(docs), base_ipt, base_nft, keep if seen[0] % kernel_every == 0 else None)] += 1
        if len(corpus) < 10_000:  # all of them go through a running daemon too
            corpus.append(docs)
        if seen[0] % 1000 == 0:
            progress(f"bad input: {seen[0]}/{count} examples")

    check()
    took = time.monotonic() - t0
    loaded = kernel_accepts(keep)
    return {"scenario": "badinput", "examples": seen[0], **outcomes, "kernel_loaded": loaded,
            "seconds": round(took, 1), "findings": 0, "corpus": corpus}


def write_corpus(corpus: list[list[dict]], path: Path) -> Path:
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [d for docs in corpus for d in docs]}))
    return path


def daemon_batches(mode: str, corpus: list[list[dict]], batches: int, progress: Callable[[str], None] = print) -> dict:
    """The generated manifests through a running `svcproxy run`, `batches` files in turn next to
    the good web Service, under TCP load to it: the daemon must live, keep web programmed and
    serving, and log the bad objects."""
    from tests.daemon.netenv import Daemon, NetEnv

    from .harness import TCP_PORT, TCP_TARGET, WEB_IP, Load, rules_snapshot, write_docs

    env = NetEnv()
    try:
        with tempfile.TemporaryDirectory(prefix="svcproxy-rel-") as tmp:
            m = Path(tmp) / "m"
            m.mkdir()
            env.serve("tcp", ["10.0.1.10"], TCP_TARGET)
            write_docs(m / "web.yaml", web_docs([Pod("10.0.1.10", "node-a")], node_port=False))
            log = Path(tmp) / "daemon.log"
            daemon = Daemon(env, m, mode, log).start()
            n = daemon.wait_sync(0)
            load = Load(env.node, "tcp", WEB_IP, TCP_PORT)
            size = max(1, len(corpus) // batches)
            objects = 0
            try:
                for b in range(batches):
                    chunk = corpus[b * size:(b + 1) * size]
                    objects += 2 * len(chunk)
                    (m / "odd.json.tmp").write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                                                "items": [d for docs in chunk for d in docs]}))
                    (m / "odd.json.tmp").rename(m / "odd.json")
                    n = daemon.wait_sync(n, timeout=60)
                    if "10.0.1.10" not in rules_snapshot(env.node, mode):
                        raise Finding(f"{mode}: the web Service's endpoint left the rules after batch {b + 1}")
                progress(f"bad input: {objects} generated objects through svcproxy run ({mode})")
                time.sleep(0.3)
            finally:
                traffic = load.stop()
                status = daemon.stop()
            text = log.read_text()
    finally:
        env.close()
    return {"scenario": "badinput-daemon", "mode": mode, "objects": objects, "batches": batches, "syncs": n,
            "errors_logged": sum(" E svcproxy" in x or " W svcproxy" in x for x in text.splitlines()),
            "tracebacks": text.count("Traceback (most recent call last)"), "first_traceback": _traceback(text), "daemon_exit": status,
            "attempts": traffic["attempts"], "failures": traffic["failures"]}


def _traceback(text: str) -> str:
    at = text.find("Traceback (most recent call last)")
    return text[at:at + 3000] if at >= 0 else ""
