"""Kernel plumbing for the lab: namespaces, links and processes, through the `ip` tool.

Every call names its namespace explicitly (`ip -n NS ...`, `ip netns exec NS ...`); nothing
here touches the root namespace's links, routes or netfilter.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from .plan import LabError


def run(argv: Sequence[str], *, input: str | None = None, check: bool = True, timeout: float = 30) -> str:
    """Run a tool; on failure raise LabError with the command and its error output."""
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise LabError(f"{argv[0]}: command not found (apt-get install iproute2 iptables nftables)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv)}: no answer within {timeout:.0f}s") from None
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def ip_batch(ns: str, commands: Iterable[str]) -> None:
    """Several `ip` commands in one namespace and one process (`ip -n NS -batch -`)."""
    text = "\n".join(commands) + "\n"
    run(["ip", "-n", ns, "-batch", "-"], input=text)


def list_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def add_namespace(name: str) -> None:
    if name in list_namespaces():
        raise LabError(f"network namespace {name} already exists (another lab with this prefix? "
                       "run `svcproxy lab down --prefix ...` or pick another --prefix)")
    run(["ip", "netns", "add", name])
    ip_batch(name, ["link set lo up"])


def delete_namespace(name: str) -> None:
    run(["ip", "netns", "delete", name], check=False)


@contextlib.contextmanager
def scratch_namespace(prefix: str) -> Iterator[str]:
    """A fresh namespace `<prefix>-<random>` with lo up, removed whatever happens (tests, benches)."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    add_namespace(name)
    try:
        yield name
    finally:
        delete_namespace(name)


def sysctls(ns: str, values: dict[str, str]) -> None:
    """Set sysctls inside a namespace (the per-namespace net.* ones)."""
    run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())])


def exec_in(ns: str, argv: Sequence[str], *, input: str | None = None, check: bool = True,
            timeout: float = 30) -> str:
    return run(["ip", "netns", "exec", ns, *argv], input=input, check=check, timeout=timeout)


def spawn(ns: str, argv: Sequence[str], log: Path) -> subprocess.Popen:
    """Start a long-running process inside a namespace, detached from our session, logging to log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def namespace_pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in out.split() if x.isdigit()]


def alive(pid: int) -> bool:
    """True while pid runs (a zombie counts as gone; it is reaped if it is our child)."""
    if pid <= 0:
        return False
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_processes(pids: Iterable[int], grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL what is still there after grace seconds."""
    pids = [p for p in set(pids) if p > 1 and p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pids = [p for p in pids if alive(p)]
            if not pids:
                return
            time.sleep(0.02)


def pid_is(pid: int, needle: str) -> bool:
    """Guards against pid reuse: does pid's command line still mention needle?"""
    try:
        return needle in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
