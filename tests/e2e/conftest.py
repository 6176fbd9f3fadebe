"""End-to-end: real packets through a lab (svcproxy/lab) whose nodes run `svcproxy run`.

One lab per test module and proxy mode (module-scoped, parametrized over iptables and
nftables); each test module names its lab prefix in LAB_PREFIX (starting with "e2").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from svcproxy.dataplane import MODES
from svcproxy.lab import Lab
from svcproxy.lab.checks import dataplane_missing

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = [ROOT / "examples" / "cluster", Path(__file__).parent / "manifests"]


@pytest.fixture(scope="module", params=[*MODES, "nftables-maps"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """One lab per mode, and nftables once more with --nftables-layout maps."""
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root (network namespaces)")
    mode, _, layout = request.param.partition("-")
    missing = dataplane_missing(mode)
    if missing:
        pytest.xfail(f"{missing} (another engineer's work in progress)")
    prefix = request.module.LAB_PREFIX + mode[0] + layout[:1]
    lab = Lab.up(MANIFESTS, mode=mode, prefix=prefix, nftables_layout=layout or "kube-proxy")
    try:
        if layout == "maps":  # the nodes really run the maps layout
            assert "map endpoints-" in lab.rules(lab.nodes[0])
        yield lab
    finally:
        lab.down()
