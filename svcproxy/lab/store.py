"""The lab's state on disk: what was created, so status, apply and down work from any process.

/run/svcproxy-lab/<prefix>/ (or $SVCPROXY_LAB_DIR/<prefix>/) holds state.json (namespaces,
nodes, pods, process ids), manifests/ (what the proxies watch) and logs/. Namespaces are
recorded before they are created, so a lab that crashed half-way can still be removed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .plan import NodeSpec, PodSpec

DEFAULT_ROOT = "/run/svcproxy-lab"


def lab_root() -> Path:
    return Path(os.environ.get("SVCPROXY_LAB_DIR", DEFAULT_ROOT))


@dataclass
class LabState:
    prefix: str
    mode: str = "iptables"
    nftables_layout: str = "kube-proxy"  # nftables mode's table layout (svcproxy run --nftables-layout)
    nodes: list[NodeSpec] = field(default_factory=list)
    pods: list[PodSpec] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)  # every namespace this lab may have made
    pids: dict[str, int] = field(default_factory=dict)  # "pod:<ip>" / "proxy:<node>" -> pid
    external_via: str = ""  # the node the outside client routes LB/external IPs through
    programmer: str = "svcproxy run"
    started: float = 0.0
    up: bool = False  # True once `lab up` finished

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> LabState:
        data = json.loads(text)
        data["nodes"] = [NodeSpec(**n) for n in data.get("nodes", [])]
        data["pods"] = [PodSpec(**{**p, "tcp_ports": tuple(p["tcp_ports"]), "udp_ports": tuple(p["udp_ports"])})
                        for p in data.get("pods", [])]
        return cls(**data)


class Store:
    """One lab's directory."""

    def __init__(self, prefix: str, root: Path | None = None):
        self.dir = (root or lab_root()) / prefix
        self.state_file = self.dir / "state.json"
        self.manifests = self.dir / "manifests"
        self.logs = self.dir / "logs"
        self.run_dir = self.dir / "run"

    def exists(self) -> bool:
        return self.state_file.exists()

    def load(self) -> LabState | None:
        try:
            return LabState.from_json(self.state_file.read_text())
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def save(self, state: LabState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(state.to_json())
        os.replace(tmp, self.state_file)

    def write_manifests(self, text: str) -> None:
        """Replace the proxies' manifest atomically (a half-written file would be a half cluster)."""
        self.manifests.mkdir(parents=True, exist_ok=True)
        tmp = self.manifests / ".cluster.yaml.tmp"  # dot files are not read by the manifest source
        tmp.write_text(text)
        os.replace(tmp, self.manifests / "cluster.yaml")
