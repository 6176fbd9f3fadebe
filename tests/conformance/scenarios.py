"""kube-proxy's expected packet flows, read from the data files in this directory.

scenarios/<name>.yaml transcribes one (or a few related) kube-proxy unit tests: the render flags,
cases (which manifests under manifests/<name>/ make up the cluster) and flows, each written as
kube-proxy's packetFlowTest writes it: {name, from, to, port, protocol, output, masq}.

output is kube-proxy's tracer string: "" (no rule touched the packet: it goes on unchanged),
"ACCEPT", "DROP", "REJECT", or "ip:port, ip:port" (every endpoint the packet may be sent to).
A flow may override output/masq for one proxy mode (nftables: {output: REJECT}) where kube-proxy's
two modes differ by design, or run in some modes only (modes: [nftables]).

known_findings.yaml lists the flows where svcproxy is known to disagree; they run as strict xfails.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
MANIFESTS = HERE / "manifests"
FINDINGS = HERE / "known_findings.yaml"
MODES = ("iptables", "nftables")
MAPS = "nftables-maps"  # nftables mode with --nftables-layout maps: every nftables flow runs there too


@dataclass(frozen=True)
class Expected:
    """What svcproxy trace's JSON must say for a flow."""

    verdict: str  # ACCEPT | DROP | REJECT
    endpoints: tuple[str, ...]  # sorted ip:port list; for unmodified packets, the original destination
    masquerade: bool
    rewritten: bool  # False when kube-proxy expects the packet to go on unchanged ("" or ACCEPT)


@dataclass(frozen=True)
class Flow:
    scenario: str
    case: str
    name: str
    mode: str
    source: str
    destination: str
    port: int
    protocol: str
    output: str  # kube-proxy's own expectation string, kept for messages
    masq: bool
    finding: str | None = None  # a known svcproxy disagreement: the test is a strict xfail

    @property
    def id(self) -> str:
        return f"{self.scenario}/{self.case}/{self.name}/{self.mode}"

    def expected(self) -> Expected:
        return expectation(self.output, self.destination, self.port, self.masq)


@dataclass(frozen=True)
class Case:
    scenario: str
    name: str
    modes: tuple[str, ...]
    manifests: tuple[Path, ...]
    flags: tuple[str, ...]
    flows: tuple[Flow, ...] = field(default=())
    upstream: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.scenario}/{self.name}"


def endpoint(ip: str, port: int | str) -> str:
    """ip:port the way kube-proxy prints it ([v6]:port)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def expectation(output: str, destination: str, port: int, masq: bool) -> Expected:
    """Map kube-proxy's tracer output onto svcproxy trace's verdict / endpoints / masquerade."""
    out = output.strip()
    if out in ("", "ACCEPT"):
        return Expected("ACCEPT", (endpoint(destination, port),), masq, rewritten=False)
    if out in ("DROP", "REJECT"):
        return Expected(out, (), masq, rewritten=False)
    eps = []
    for item in out.split(","):
        host, _, p = item.strip().rpartition(":")
        ipaddress.ip_address(host.strip("[]"))  # a typo in a data file fails loudly here
        eps.append(endpoint(host.strip("[]"), p))
    return Expected("ACCEPT", tuple(sorted(eps)), masq, rewritten=True)


def _flat(items: object) -> list[str]:
    """Flags as one list of strings (YAML anchors nest lists: [*ipv4, --flag])."""
    if isinstance(items, list | tuple):
        return [x for item in items for x in _flat(item)]
    return [str(items)]


@dataclass(frozen=True)
class Finding:
    """A known disagreement: which flows (an fnmatch pattern on scenario/case/flow) in which modes."""

    pattern: str
    modes: tuple[str, ...]
    reason: str

    def covers(self, flow: Flow) -> bool:
        mode = "nftables" if flow.mode == MAPS else flow.mode  # the maps layout shares nftables' findings
        return mode in self.modes and fnmatch.fnmatchcase(f"{flow.scenario}/{flow.case}/{flow.name}", self.pattern)


def _findings() -> list[Finding]:
    if not FINDINGS.exists():
        return []
    data = yaml.safe_load(FINDINGS.read_text()) or []
    return [Finding(d["flow"], tuple(d.get("modes", MODES)), d["finding"]) for d in data]


def _flows(scenario: str, case: dict, modes: tuple[str, ...], shared: list[dict],
           findings: list[Finding]) -> tuple[Flow, ...]:
    raw = [f for item in case.get("flows", shared) for f in (item if isinstance(item, list) else [item])]
    overrides = case.get("overrides") or {}
    unknown = set(overrides) - {f["name"] for f in raw}
    if unknown:
        raise ValueError(f"{scenario}/{case['name']}: overrides name no flow: {sorted(unknown)}")
    out = []
    for f in raw:
        f = {**f, **overrides.get(f["name"], {})}
        for mode in f.get("modes", modes):
            if mode not in modes:
                continue
            per_mode = {**f, **(f.get(mode) or {})}
            flow = Flow(scenario, case["name"], f["name"], mode, str(f["from"]), str(f["to"]), int(f["port"]),
                        str(f.get("protocol", "TCP")).upper(), str(per_mode["output"]), bool(per_mode.get("masq", False)))
            reasons = [f.reason for f in findings if f.covers(flow)]
            out.append(replace(flow, finding="; ".join(reasons) or None))
            if mode == "nftables":  # the same flow, and kube-proxy's expectation, in the maps layout
                reasons = [f.reason for f in findings if f.covers(replace(flow, mode=MAPS))]
                out.append(replace(flow, mode=MAPS, finding="; ".join(reasons) or None))
    return tuple(out)


def load_cases() -> list[Case]:
    """Every case of every scenario file, its flows expanded per proxy mode."""
    findings = _findings()
    cases = []
    for path in sorted(SCENARIOS.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        name = path.stem
        for case in data["cases"]:
            modes = tuple(case.get("modes", data.get("modes", MODES)))
            manifests = tuple(MANIFESTS / name / m for m in case["manifests"])
            for m in manifests:
                if not m.exists():
                    raise FileNotFoundError(f"{path.name}: case {case['name']!r} names missing manifest {m}")
            flags = tuple(_flat([data.get("flags", []), case.get("flags", [])]))
            flows = _flows(name, case, modes, data.get("flows", []), findings)
            cases.append(Case(name, case["name"], modes, manifests, flags, flows, tuple(data.get("upstream", ()))))
    flows = [f for c in cases for f in c.flows]
    stale = [f.pattern for f in findings if not any(f.covers(flow) for flow in flows)]
    if stale:
        raise ValueError(f"known_findings.yaml names flows that do not exist: {stale}")
    return cases


def mode_args(mode: str) -> list[str]:
    """--proxy-mode (and the nftables layout) of a flow's mode."""
    if mode == MAPS:
        return ["--proxy-mode", "nftables", "--nftables-layout", "maps"]
    return ["--proxy-mode", mode]


def trace_args(case: Case, flow: Flow) -> list[str]:
    """The `svcproxy trace` command line for one flow (without the program name)."""
    files = [x for m in case.manifests for x in ("-f", str(m))]
    return ["trace", *files, *case.flags, *mode_args(flow.mode), "--source", flow.source,
            "--destination", flow.destination, "--port", str(flow.port), "--protocol", flow.protocol,
            "--output", "json"]


def render_args(case: Case, mode: str) -> list[str]:
    files = [x for m in case.manifests for x in ("-f", str(m))]
    return ["render", *files, *case.flags, "--proxy-mode", mode]
