"""Other tools' rules next to svcproxy's: after run, a full resync and cleanup they are
byte-identical.

The node namespace gets what a real host carries: a host firewall in the iptables filter table
(both families), a docker-style nat setup (DOCKER chains hooked from PREROUTING and OUTPUT, a
MASQUERADE and a published port), and a firewalld-style nftables table of its own. Then
`svcproxy run` programs the web Service, resyncs (periodic full syncs, and a partial one after
a change), is stopped, and `svcproxy cleanup` removes what is ours. The other tools' rules are
compared with what they were at each of those points.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.daemon.netenv import NODE_IP, PYTHON, Daemon, NetEnv

from .harness import COUNTERS, Pod, web_docs, write_docs

IPTABLES_FOREIGN = """*filter
:FOREIGN-IN - [0:0]
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -m comment --comment "ssh from anywhere" -j ACCEPT
-A INPUT -j FOREIGN-IN
-A FORWARD -j DOCKER-USER
-A FORWARD -o docker0 -j DOCKER
-A FOREIGN-IN -s 203.0.113.0/24 -j DROP
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-USER -j RETURN
COMMIT
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 172.17.0.2:80
COMMIT
"""
IP6TABLES_FOREIGN = """*filter
:FOREIGN-IN6 - [0:0]
-A INPUT -p ipv6-icmp -j ACCEPT
-A INPUT -j FOREIGN-IN6
-A FOREIGN-IN6 -s 2001:db8::/32 -j DROP
COMMIT
"""
NFT_FOREIGN = """table inet firewalld {
\tchain filter_INPUT {
\t\ttype filter hook input priority filter + 10; policy accept;
\t\tct state established,related accept
\t\tiifname "lo" accept
\t\ttcp dport 22 accept comment "ssh"
\t}
\tchain nat_PREROUTING {
\t\ttype nat hook prerouting priority dstnat + 10; policy accept;
\t\ttcp dport 2222 redirect to :22
\t}
}
"""


def foreign_snapshot(ns: str) -> dict[str, str]:
    """The other tools' rules: every iptables line that is not ours (in order, without packet
    counters) per family, and the firewalld table as nft lists it."""
    def run(*argv: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True).stdout
    out = {}
    for tool in ("iptables-save", "ip6tables-save"):
        lines = [x for x in run(tool).splitlines() if not x.startswith("#") and "KUBE-" not in x]
        out[tool] = COUNTERS.sub("", "\n".join(_without_empty_tables(lines)))
    out["nft firewalld"] = run("nft", "list", "table", "inet", "firewalld")
    return out


BUILTIN = re.compile(r":(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) (ACCEPT|DROP)( \[\d+:\d+\])?")


def _without_empty_tables(lines: list[str]) -> list[str]:
    """Leave out tables that hold nothing but empty built-in chains: iptables-nft makes the
    table when svcproxy adds its canary chain to it (kube-proxy's KUBE-PROXY-CANARY in mangle),
    and neither svcproxy nor kube-proxy deletes a table, which another tool may be using."""
    out: list[str] = []
    block: list[str] = []
    for line in lines:
        block.append(line)
        if line == "COMMIT":
            if not all(BUILTIN.fullmatch(x) for x in block[1:-1]):
                out += block
            block = []
    return out + block


def ours_left(ns: str) -> list[str]:
    def run(*argv: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True).stdout
    left = [x for tool in ("iptables-save", "ip6tables-save") for x in run(tool).splitlines() if "KUBE-" in x]
    left += [x for x in run("nft", "list", "tables").splitlines() if "kube-proxy" in x]
    return left


def foreign_rules(mode: str, progress: Callable[[str], None] = print) -> dict:
    env = NetEnv()
    try:
        with tempfile.TemporaryDirectory(prefix="svcproxy-rel-") as tmp:
            return _run(env, mode, Path(tmp), progress)
    finally:
        env.close()


def _run(env: NetEnv, mode: str, tmp: Path, progress: Callable[[str], None]) -> dict:
    for argv, text in ((["iptables-restore", "--noflush"], IPTABLES_FOREIGN),
                       (["ip6tables-restore", "--noflush"], IP6TABLES_FOREIGN), (["nft", "-f", "-"], NFT_FOREIGN)):
        subprocess.run(["ip", "netns", "exec", env.node, *argv], input=text, text=True, check=True)
    before = foreign_snapshot(env.node)
    m = tmp / "m"
    m.mkdir()
    write_docs(m / "web.yaml", web_docs([Pod("10.0.1.10", "node-a"), Pod("10.0.1.11", "node-a")]))
    daemon = Daemon(env, m, mode, tmp / "daemon.log", "--sync-period", "1s").start()
    compared: dict[str, list[str]] = {}
    try:
        n = daemon.wait_sync(0)
        compared["after the first sync"] = _differs(before, foreign_snapshot(env.node))
        write_docs(m / "web.yaml", web_docs([Pod("10.0.1.12", "node-a")]))
        n = daemon.wait_sync(n)
        n = daemon.wait_sync(n)  # and a periodic full sync (--sync-period 1s)
        n = daemon.wait_sync(n)
        compared["after a change and full resyncs"] = _differs(before, foreign_snapshot(env.node))
        progress(f"{mode}: {n} syncs next to the foreign rules")
    finally:
        status = daemon.stop()
    cleanup = subprocess.run(["ip", "netns", "exec", env.node, str(Path(PYTHON).with_name("svcproxy")), "cleanup"],
                             capture_output=True, text=True)
    compared["after svcproxy cleanup"] = _differs(before, foreign_snapshot(env.node))
    left = ours_left(env.node)
    return {"scenario": "foreign", "mode": mode, "node_ip": NODE_IP, "syncs": n, "daemon_exit": status,
            "cleanup_exit": cleanup.returncode, "differences": {k: v for k, v in compared.items() if v},
            "ours_left_after_cleanup": left[:5], "checked": list(compared), "ok": not any(compared.values()) and not left
            and cleanup.returncode == 0}


def _differs(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [k for k in before if before[k] != after.get(k)]


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(foreign_rules(sys.argv[1])))
