"""`svcproxy lab` end to end, through the real command: up, status, curl, apply, a second up,
down, and down after the lab process was killed half-way."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from svcproxy.cli import main
from svcproxy.lab.checks import dataplane_missing
from svcproxy.lab.demo import scaled_down
from svcproxy.lab.netns import list_namespaces

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "cluster"
SVCPROXY = [sys.executable, "-c", "import sys; from svcproxy.cli import main; sys.argv[0] = 'svcproxy'; main()"]


def svcproxy(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run([*SVCPROXY, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def leftovers(prefix: str, lab_dir: Path) -> tuple[list[str], list[int]]:
    """Namespaces with the prefix, and processes whose command line names the lab's directory."""
    needle = str(lab_dir / prefix).encode()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return [ns for ns in list_namespaces() if ns.startswith(prefix + "-")], pids


def need_dataplane(mode: str = "iptables") -> None:
    missing = dataplane_missing(mode)
    if missing:
        pytest.xfail(f"{missing} (another engineer's work in progress)")


@pytest.mark.kernel
def test_up_status_curl_apply_down(lab_dir: Path, tmp_path: Path, cleanup_prefix: list[str]):
    need_dataplane()
    cleanup_prefix.append("e2l")
    svcproxy("lab", "up", "-f", str(EXAMPLES), "--prefix", "e2l")
    st = json.loads(svcproxy("lab", "status", "--prefix", "e2l", "--output", "json").stdout)
    assert st["up"] and st["mode"] == "iptables"
    assert [n["name"] for n in st["nodes"]] == ["test-node", "test-node-2"]
    assert all(n["exists"] and n["proxy"]["alive"] for n in st["nodes"])
    assert len(st["pods"]) == 10 and all(p["exists"] and p["server"]["alive"] for p in st["pods"])
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert "e2l-" not in root_links  # the lab never puts anything in the root namespace

    out = svcproxy("lab", "curl", "web", "--from", "dns-1-20", "-n", "30", "--prefix", "e2l").stdout
    assert {"web-1-10", "web-1-11", "web-2-10"} <= set(re.findall(r"web-\d-\d+", out))
    assert "web-2-11" not in out and "10.0.1.20 (client address)" in out
    out = svcproxy("lab", "curl", "web", "--from", "outside", "--via", "nodeport", "--node", "test-node-2",
                   "-n", "10", "--prefix", "e2l").stdout
    assert "(masqueraded)" in out and "(client address)" not in out
    out = svcproxy("lab", "curl", "empty", "-n", "2", "--prefix", "e2l").stdout
    assert "refused" in out
    # `lab status --page`: the node's status page (the daemon's default address), forwarded here
    from svcproxy.lab.status_page import PageForward

    page = PageForward(next(n["namespace"] for n in st["nodes"] if n["name"] == "test-node")).start()
    try:
        with urllib.request.urlopen(page.url + "api/status", timeout=10) as r:
            assert json.loads(r.read())["node"] == "test-node"
    finally:
        page.close()

    # Scale web down (10.0.1.11 leaves) and add a service with a new pod.
    new = tmp_path / "new"
    new.mkdir()
    scaled_down(EXAMPLES, new, "web", "10.0.1.11")
    (new / "more.yaml").write_text((Path(__file__).parents[1] / "e2e" / "manifests" / "extra.yaml").read_text())
    out = svcproxy("lab", "apply", "-f", str(new), "--prefix", "e2l").stdout
    follow_ms = int(re.search(r"followed in (\d+) ms", out).group(1))
    assert follow_ms < 1000, out
    namespaces = list_namespaces()
    assert "e2l-10.0.1.11" not in namespaces and "e2l-10.0.1.60" in namespaces
    out = svcproxy("lab", "curl", "web", "--from", "dns-1-20", "-n", "30", "--prefix", "e2l").stdout
    assert "web-1-11" not in out and "web-1-10" in out
    out = svcproxy("lab", "curl", "itp", "--from", "dns-1-20", "-n", "3", "--prefix", "e2l").stdout
    assert "itp-1-60" in out

    # A second `lab up` replaces the running lab.
    svcproxy("lab", "up", "-f", str(EXAMPLES), "--prefix", "e2l")
    assert "e2l-10.0.1.11" in list_namespaces() and "e2l-10.0.1.60" not in list_namespaces()

    out = svcproxy("lab", "down", "--prefix", "e2l").stdout
    assert "removed" in out
    assert leftovers("e2l", lab_dir) == ([], [])
    assert not (lab_dir / "e2l").exists()
    assert "not up" in svcproxy("lab", "status", "--prefix", "e2l").stdout


@pytest.mark.kernel
def test_down_after_the_lab_process_was_killed(lab_dir: Path, cleanup_prefix: list[str]):
    need_dataplane()
    cleanup_prefix.append("e2c")
    proc = subprocess.Popen([*SVCPROXY, "lab", "up", "-f", str(EXAMPLES), "--prefix", "e2c"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = lab_dir / "e2c" / "state.json"
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:  # kill it once pods run: a crash half-way
            try:
                if any(k.startswith("pod:") for k in json.loads(state.read_text())["pids"]):
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.01)
        else:
            pytest.fail("lab up never started a pod")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    namespaces, pids = leftovers("e2c", lab_dir)
    assert namespaces and pids  # the crash left things behind ...
    out = svcproxy("lab", "down", "--prefix", "e2c").stdout
    assert "removed" in out
    assert leftovers("e2c", lab_dir) == ([], [])  # ... and `lab down` removed them all


@pytest.mark.kernel
def test_down_without_state_file_still_removes_namespaces(lab_dir: Path, cleanup_prefix: list[str]):
    cleanup_prefix.append("e2s")
    subprocess.run(["ip", "netns", "add", "e2s-n1"], check=True)
    out = svcproxy("lab", "down", "--prefix", "e2s").stdout
    assert "removed 1 namespace" in out and "e2s-n1" not in list_namespaces()


def test_cli_errors_say_what_to_do(lab_dir: Path, monkeypatch: pytest.MonkeyPatch):
    runner = CliRunner()
    res = runner.invoke(main, ["lab", "curl", "web", "--prefix", "e2q"])
    assert res.exit_code == 1 and "no lab 'e2q' is up (start one: svcproxy lab up" in res.output
    res = runner.invoke(main, ["lab", "up", "-f", str(EXAMPLES), "--prefix", "toolongprefix"])
    assert res.exit_code == 1 and "must be 1-6 lowercase" in res.output
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    res = runner.invoke(main, ["lab", "up", "-f", str(EXAMPLES), "--prefix", "e2q"])
    assert res.exit_code == 1 and "needs root: run as root" in res.output
    monkeypatch.setattr("shutil.which", lambda tool: None if tool == "nft" else "/usr/sbin/" + tool)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    res = runner.invoke(main, ["lab", "up", "-f", str(EXAMPLES), "--proxy-mode", "nftables", "--prefix", "e2q"])
    assert res.exit_code == 1 and "nft is not installed" in res.output and "apt-get install nftables" in res.output
