"""Changing a running cluster (`lab apply`): every proxy follows through its manifest watch."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from svcproxy.lab.demo import scaled_down

from .conftest import MANIFESTS
from .helpers import errors, served

pytestmark = pytest.mark.kernel
LAB_PREFIX = "e2d"
EXAMPLES = MANIFESTS[0]
WEB = ("172.30.0.10", 80)


def scaled_up(src: Path, dst: Path, ip: str, node: str) -> None:
    """src's manifests plus one more ready web endpoint; sticky deleted."""
    for f in sorted(src.glob("*.yaml")):
        if f.name == "sticky.yaml":
            continue
        docs = list(yaml.safe_load_all(f.read_text()))
        for d in docs:
            if d.get("kind") == "EndpointSlice" and d["metadata"]["name"] == "web-abc12":
                d["endpoints"].append({"addresses": [ip], "nodeName": node, "conditions": {"ready": True}})
        (dst / f.name).write_text(yaml.safe_dump_all(docs))


def test_scale_down_then_up_and_delete(lab, tmp_path: Path):
    down = tmp_path / "down"
    down.mkdir()
    scaled_down(EXAMPLES, down, "web", "10.0.1.11")
    res = lab.apply([down, MANIFESTS[1]])
    assert res.removed == ("web-1-11",) and res.added == ()
    assert res.follow_seconds < 1.0, res
    assert served(lab.probe("dns-2-20", *WEB, count=30)) == {"web-1-10", "web-2-10"}
    assert "web-1-11" not in {p.name for p in lab.pods}

    up = tmp_path / "up"
    up.mkdir()
    scaled_up(down, up, "10.0.2.12", "test-node-2")
    res = lab.apply([up, MANIFESTS[1]])
    assert res.added == ("web-2-12",) and "sticky-1-40" in res.removed
    assert res.follow_seconds < 1.0, res
    assert served(lab.probe("dns-1-20", *WEB, count=40)) == {"web-1-10", "web-2-10", "web-2-12"}
    probes = lab.probe("dns-1-20", "172.30.0.30", 80, count=2, timeout=0.5)  # sticky is gone
    assert not any(p.ok for p in probes), errors(probes)
