"""Every conformance case's rendered ruleset is accepted by the kernel's own tools.

The flows prove what the rules mean; this proves the same text would load: `iptables-restore
--test` (ip6tables-restore for IPv6) and `nft -c -f`, run inside a network namespace this module
creates and always removes. Nothing is committed: both tools only check.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from svcproxy.cli import main
from svcproxy.lab.netns import scratch_namespace

from .scenarios import Case, load_cases, render_args

CASES = [(case, mode) for case in load_cases() for mode in case.modes]


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    """One namespace (prefix "cnf") for all checks; removed whatever happens."""
    for tool in ("ip", "iptables-restore", "ip6tables-restore", "nft"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed: apt-get install iproute2 iptables nftables")
    with scratch_namespace("cnf") as name:
        yield name


def rendered(case: Case, mode: str) -> str:
    r = CliRunner().invoke(main, render_args(case, mode))
    assert r.exit_code == 0, f"render {case.id} ({mode}): {r.stderr or r.output}"
    return r.stdout


BUILTIN_TARGETS = {"ACCEPT", "DROP", "REJECT", "RETURN", "MARK", "DNAT", "SNAT", "MASQUERADE", "CONNMARK", "NOTRACK", "LOG"}
BUILTIN_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


def undeclared_chains(text: str) -> dict[str, set[str]]:
    """Per table, chains that rules use (-A X, -j X) but the input never creates (:X).

    iptables-restore --test with the nf_tables backend does not catch these; kube-proxy's own
    tests check the same (checkIPTablesRuleJumps).
    """
    out: dict[str, set[str]] = {}
    table, declared, used = "", set(), set()
    for line in [*text.splitlines(), "*end"]:
        if line.startswith("*"):
            if table and used - declared - BUILTIN_CHAINS - BUILTIN_TARGETS:
                out[table] = used - declared - BUILTIN_CHAINS - BUILTIN_TARGETS
            table, declared, used = line[1:], set(), set()
        elif line.startswith(":"):
            declared.add(line[1:].split()[0])
        elif line.startswith("-A "):
            words = line.split()
            used.add(words[1])
            used.update(words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-j", "-g"))
    return out


def test_undeclared_chains_are_caught() -> None:
    text = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j KUBE-SVC-X\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n"
    assert undeclared_chains(text) == {"nat": {"KUBE-SVC-X"}}


def _is_ipv6(case: Case) -> bool:
    flags = list(case.flags)
    if "--ip-family" in flags:
        return flags[flags.index("--ip-family") + 1] == "IPv6"
    return "--node-ip" in flags and ":" in flags[flags.index("--node-ip") + 1]


@pytest.mark.kernel
@pytest.mark.parametrize(("case", "mode"), [pytest.param(c, m, id=f"{c.id}/{m}") for c, m in CASES])
def test_kernel_accepts_rendered_ruleset(netns: str, case: Case, mode: str) -> None:
    text = rendered(case, mode)
    assert text.strip(), f"{case.id} ({mode}): empty ruleset"
    if mode == "iptables":
        assert not undeclared_chains(text), f"{case.id}: rules use chains never created: {undeclared_chains(text)}"
        tool = ["ip6tables-restore" if _is_ipv6(case) else "iptables-restore", "--test"]
    else:
        tool = ["nft", "-c", "-f", "-"]
    p = subprocess.run(["ip", "netns", "exec", netns, *tool], input=text, capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(tool)} rejects {case.id} ({mode}):\n{p.stderr}\n--- ruleset ---\n{text}"
