"""Running iptables, iptables-restore and friends for one IP family (optionally in a netns)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ..protocol import ApplyError


class Iptables:
    """The iptables commands of one family, optionally run inside a network namespace."""

    def __init__(self, family: int, netns: str | None = None) -> None:
        self.family = family
        prefix = ["ip", "netns", "exec", netns] if netns else []
        base = "ip6tables" if family == 6 else "iptables"
        self.iptables = [*prefix, base, "-w"]
        self.restore_cmd = [*prefix, f"{base}-restore", "-w", "--noflush"]
        self.save_cmd = [*prefix, f"{base}-save"]
        self.nft_cmd = [*prefix, "nft"]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            p = subprocess.run([*self.iptables, *args], capture_output=True, text=True)
        except FileNotFoundError:
            raise ApplyError(f"{self.iptables[-2]} not found: install it (apt-get install iptables)") from None
        if check and p.returncode:
            raise ApplyError(f"{' '.join(self.iptables[-2:])} {' '.join(args)}: {p.stderr.strip()}")
        return p

    def restore(self, data: str) -> None:
        """One atomic iptables-restore --noflush transaction; ApplyError names the failing line."""
        try:
            p = subprocess.run(self.restore_cmd, input=data, capture_output=True, text=True)
        except FileNotFoundError:
            raise ApplyError(f"{self.restore_cmd[-3]} not found: install it (apt-get install iptables)") from None
        if p.returncode:
            raise ApplyError(explain(p.stderr, data))

    def save(self, table: str) -> str:
        p = subprocess.run([*self.save_cmd, "-t", table], capture_output=True, text=True)
        return p.stdout if p.returncode == 0 else ""

    def chains(self, table: str) -> set[str]:
        """Chain names in a table: from `nft list chains` when iptables runs on nf_tables (cheap:
        no rules are read), else from iptables-save."""
        if "nf_tables" in self.run("--version", check=False).stdout:
            try:
                p = subprocess.run([*self.nft_cmd, "list", "chains", "ip6" if self.family == 6 else "ip"],
                                   capture_output=True, text=True)
            except FileNotFoundError:
                p = None
            if p is not None and p.returncode == 0:
                return nft_chains(p.stdout, table)
        return {line[1:].split()[0] for line in self.save(table).splitlines() if line.startswith(":")}


def nft_chains(listing: str, table: str) -> set[str]:
    out: set[str] = set()
    current = ""
    for line in listing.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "table":
            current = words[2]
        elif len(words) >= 2 and words[0] == "chain" and current == table:
            out.add(words[1])
    return out


def explain(stderr: str, data: str) -> str:
    """iptables-restore's message plus the input line it names ("line N failed")."""
    msg = stderr.strip() or "iptables-restore failed"
    lines = data.splitlines()
    for word in msg.replace(":", " ").split():
        if word.isdigit() and "line" in msg:
            i = int(word)
            if 0 < i <= len(lines):
                return f"{msg} (input line {i}: {lines[i - 1]})"
    return msg


BE_LIBERAL = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal"


def tcp_be_liberal(netns: str | None = None) -> bool:
    """nf_conntrack_tcp_be_liberal of the network namespace the rules go to (the daemon's own,
    or netns); unreadable (no nf_conntrack loaded yet) counts as unset, as in kube-proxy."""
    if netns is None:
        try:
            return Path(BE_LIBERAL).read_text().strip() not in ("", "0")
        except OSError:
            return False
    p = subprocess.run(["ip", "netns", "exec", netns, "cat", BE_LIBERAL], capture_output=True, text=True)
    return p.returncode == 0 and p.stdout.strip() not in ("", "0")
