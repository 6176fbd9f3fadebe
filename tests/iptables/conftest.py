"""Fixtures for the iptables tests: states from YAML, and network namespaces that always go away."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from svcproxy.config import NodeConfig
from svcproxy.lab.netns import scratch_namespace
from svcproxy.model.load import load_text
from svcproxy.state import ProxyState, build_state

NODE = NodeConfig(hostname="test-node", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/8",))


def state_from(text: str, cfg: NodeConfig = NODE) -> ProxyState:
    objects = load_text(text)
    assert not objects.errors, objects.errors
    return build_state(objects, cfg)


def sh(ns: str, *args: str, input: str | None = None, check: bool = True) -> str:
    """Run a command inside the namespace; its stdout."""
    p = subprocess.run(["ip", "netns", "exec", ns, *args], input=input, capture_output=True, text=True)
    if check and p.returncode:
        raise AssertionError(f"{' '.join(args)}: {p.stderr}")
    return p.stdout


def saved(ns: str, table: str, family: int = 4) -> str:
    """iptables-save of one table without comments and counters, for comparisons."""
    out = sh(ns, "ip6tables-save" if family == 6 else "iptables-save", "-t", table)
    return "".join(line + "\n" for line in out.splitlines() if not line.startswith("#"))


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace (name starts with "ipt"), removed whatever happens."""
    with scratch_namespace("ipt") as name:
        yield name


@pytest.fixture(scope="module")
def module_netns() -> Iterator[str]:
    """One namespace shared by a module's tests that only use `iptables-restore --test`."""
    with scratch_namespace("ipt") as name:
        yield name
