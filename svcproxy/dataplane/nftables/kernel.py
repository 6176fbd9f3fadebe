"""The kernel edge of nftables mode: sends a transaction through our own netlink session
(netlink.py, session.py) or, where the encoder has no words for it, through `nft -f`; and reads
back which of our chains and sets the table holds."""

from __future__ import annotations

import json
import logging
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

from ...config import NodeConfig
from ..protocol import ApplyError
from . import names, netlink, session
from .commands import Tx
from .layout import Container
from .service_maps import affinity_map, endpoints_map, members_set, shared_map
from .transaction import Kernel

log = logging.getLogger(__name__)

RECORD_MAX_COMMANDS = 5000  # larger transactions are kept only as a summary in .transactions


class Driver(Protocol):
    """What NftablesDataplane and its planner need from the kernel's side: KernelIO, or
    fake.FakeKernel in tests that run without root."""

    family: str
    use_netlink: bool  # False: compile() is always None and no netlink session is used
    timings: list[tuple[str, int, float]]
    transactions: list[str]

    def run_tx(self, tx: Tx, messages: list | session.Batch | None = None) -> None: ...
    def compile(self, tx: Tx) -> list | None: ...
    def compiler(self) -> netlink.Compiler: ...
    def netlink_session(self) -> session.Session: ...
    def read_kernel(self) -> Kernel: ...
    def rule_counts(self) -> dict[str, int] | None: ...
    def affinity_entries(self, name: str) -> list[tuple[str, str]]: ...
    def delete_table(self, family: str) -> None: ...


class KernelIO:
    """The nftables driver: one transaction at a time into the kernel, and reading it back.

    nft re-reads the whole table on every run (seconds at 10,000 services), so transactions go
    through a kept-open netlink socket; nft is used for what the encoder does not encode, and
    for everything once the kernel refused our encoding of a batch that nft got in."""

    def __init__(self, cfg: NodeConfig, nft: Sequence[str], use_netlink: bool) -> None:
        self.cfg = cfg
        self.nft = tuple(nft)
        self.family = names.family_keyword(cfg.ip_family)
        self.use_netlink = use_netlink
        self._session: session.Session | None = None
        self._anon_prefix = secrets.token_hex(4)
        self._batch = 0
        self._lock = threading.Lock()
        self.netlink_batches = 0  # how many transactions went through the session (for tests)
        # last sync: (path, commands, seconds) per transaction; ("render", services, seconds) too
        self.timings: list[tuple[str, int, float]] = []
        self.transactions: list[str] = []  # the nft input of the last sync, for tests and debugging

    def read_kernel(self) -> Kernel:
        """Names of our per-service chains and affinity sets already in the kernel (startup,
        and the periodic check for hand edits)."""
        if self.use_netlink:
            return self._read_kernel_netlink()
        found: dict[str, list] = {"chains": [], "sets": [], "maps": []}
        for kind in found:
            out = self.run_capture([*self.nft, "-j", "list", kind, self.family])
            for item in json.loads(out or "{}").get("nftables", []):
                obj = item.get(kind[:-1])
                if obj and obj.get("table") == names.TABLE and obj.get("family") == self.family:
                    found[kind].append((obj["name"], int(obj.get("timeout", 0))))
        return holding(self.family, bool(found["chains"] or found["sets"]), (n for n, _ in found["chains"]),
                             found["sets"] + found["maps"])

    def _read_kernel_netlink(self) -> Kernel:
        """read_kernel() through the session: a netlink dump of the table's chains and sets."""
        try:
            chains = self.netlink_session().dump(self.family, session.GETCHAIN, names.TABLE, frozenset({3}))
            sets = self.netlink_session().dump(self.family, session.GETSET, names.TABLE, frozenset({2, 11}))
        except OSError as e:
            raise ApplyError(f"could not read table {self.family} {names.TABLE}: {e}") from e
        return holding(
            self.family, bool(chains or sets),  # our table always has its fixed chains
            (a.get(3, b"").rstrip(b"\0").decode() for a in chains),  # NFTA_CHAIN_NAME
            ((a.get(2, b"").rstrip(b"\0").decode(), int.from_bytes(a.get(11, b""), "big") // 1000)
             for a in sets))  # NFTA_SET_NAME, NFTA_SET_TIMEOUT (ms)

    def affinity_entries(self, name: str) -> list[tuple[str, str]]:
        """(client, endpoint) addresses a ClientIP affinity map holds (written by the packet path)."""
        if not self.use_netlink:
            out = self.run_capture([*self.nft, "-j", "list", "map", self.family, names.TABLE, name])
            found: list[tuple[str, str]] = []
            for item in json.loads(out or "{}").get("nftables", []):
                for key, value in (item.get("map") or {}).get("elem", []):
                    key = key.get("elem", {}).get("val", key) if isinstance(key, dict) else key
                    found.append((str(key), str(value)))
            return found
        af = socket.AF_INET if self.family == "ip" else socket.AF_INET6
        try:
            entries = self.netlink_session().set_elements(self.family, names.TABLE, name)
        except OSError as e:
            raise ApplyError(f"could not read map {name}: {e}") from e
        return [(socket.inet_ntop(af, k), socket.inet_ntop(af, v)) for k, v in entries if k and v]

    def run_tx(self, tx: Tx, messages: list | session.Batch | None = None) -> None:
        if not tx:
            return
        start = time.perf_counter()
        path = self._send(tx, messages)
        self.timings.append((path, len(tx), time.perf_counter() - start))

    def compiler(self) -> netlink.Compiler:
        with self._lock:
            self._batch += 1  # anonymous map names: unique per process and batch
            batch = self._batch
        return netlink.Compiler(self.family, names.TABLE, f"{batch:x}{self._anon_prefix}")

    def compile(self, tx: Tx) -> list | None:
        """The transaction as netlink messages, or None where nft must do it."""
        if not self.use_netlink:
            return None
        compiler = self.compiler()
        return compiler.messages if compiler.encodes(tx) else None

    def netlink_session(self) -> session.Session:
        if self._session is None:
            self._session = session.Session()
        return self._session

    def _send(self, tx: Tx, messages: list | session.Batch | None = None) -> str:
        if not self.use_netlink:
            messages = None  # encoded before a fallback to nft (below) switched netlink off
        elif messages is None:
            messages = self.compile(tx)
        if messages is not None:
            self._record(tx)
            try:
                if isinstance(messages, session.Batch):
                    self.netlink_session().send_batch(messages)
                else:
                    self.netlink_session().send(self.family, messages)
            except session.Refused as e:
                return self._fall_back_to_nft(tx, e)
            except OSError as e:
                raise ApplyError(f"the kernel refused the transaction: {e}; the previous rules stay "
                                 "in place and the next sync is a full one") from e
            self.netlink_batches += 1
            return "netlink"
        self.run(tx.text(), tx)
        return "nft"

    def _fall_back_to_nft(self, tx: Tx, refusal: OSError) -> str:
        """The kernel aborted our netlink batch (nothing applied). Send the same transaction
        through nft: if nft gets it in, this kernel disagrees with our encoder (another kernel
        version), so stay on nft from now on, slower on large tables but correct. If nft fails
        too, the transaction itself is wrong: report nft's own words."""
        try:
            self.run(tx.text(), tx)
        except ApplyError as e:
            raise ApplyError(f"{e} (through netlink: {refusal})") from e
        log.warning("nftables: the kernel refused svcproxy's netlink encoding of a transaction (%s) "
                    "but accepted the same from nft; using nft from now on (slower on large tables). "
                    "Please report this with `uname -r` and `nft -V`.", refusal)
        self.use_netlink = False
        return "nft"

    def _record(self, tx: Tx) -> None:
        self.transactions.append(record(tx))

    def delete_table(self, family: str) -> None:
        """Delete our table of this family (nothing else); fine when there is none."""
        try:
            self.run(f"delete table {family} {names.TABLE}\n")
        except ApplyError as e:
            if "No such file or directory" not in str(e):
                raise

    def rule_counts(self) -> dict[str, int] | None:
        """How many rules each chain of our table holds; None when the table is gone.

        Through `nft -t list table` (terse: without the named sets' elements)."""
        try:
            out = self.run_capture([*self.nft, "-t", "list", "table", self.family, names.TABLE])
        except ApplyError:
            return None
        counts: dict[str, int] = {}
        current = None
        for line in out.splitlines():
            text = line.strip()
            if line.startswith("\tchain "):
                current = text[6:-2].strip().strip('"')
                counts[current] = 0
            elif current is not None:
                if text == "}":
                    current = None
                elif text and not text.startswith(("comment ", "type ")):
                    counts[current] += 1
        return counts

    def run(self, text: str, tx: Tx | None = None) -> None:
        if tx is not None:
            self._record(tx)
        else:
            self.transactions.append(text)
        proc = subprocess.run([*self.nft, "-f", "-"], input=text, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ApplyError(f"nft refused the transaction ({text.count(chr(10))} commands): "
                             f"{_first_lines(proc.stderr)}; the previous rules stay in place and the "
                             "next sync is a full one")

    def run_capture(self, argv: list[str]) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ApplyError(f"{' '.join(argv)} failed: {_first_lines(proc.stderr)}")
        return proc.stdout


def record(tx: Tx) -> str:
    """What a driver keeps of a transaction for tests and debugging: its input, or for a large
    one (a cold load's 40 MB) a summary."""
    if len(tx) <= RECORD_MAX_COMMANDS:
        return tx.text()
    return f"# {len(tx)} commands, starting with:\n" + "\n".join(tx.lines(20)) + "\n"


def holding(family: str, exists: bool, chain_names: Iterable[str], sets: Iterable[tuple[str, int]]) -> Kernel:
    """The record of a table found holding these chains and (name, timeout s) sets: our
    per-service chains, content unknown (the next full sync rewrites them), and our sets and
    maps as declared."""
    kernel = Kernel(exists=exists)
    addr = "ipv4_addr" if family == "ip" else "ipv6_addr"
    kernel.chains = {name: None for name in chain_names if names.is_service_chain(name)}
    for name, timeout in sets:
        if names.is_affinity_set(name):
            kernel.sets[name] = Container(name, addr, flags="dynamic,timeout", timeout=timeout)
        elif names.is_endpoints_map(name):
            kernel.sets[name] = endpoints_map(family, name)
        elif names.is_shared_endpoints_map(name):
            kernel.sets[name] = shared_map(family, name)
        elif name.startswith(names.MEMBERS):
            kernel.sets[name] = members_set(family, name)
        elif name.startswith(names.CLIENT_AFFINITY):
            kernel.sets[name] = affinity_map(family, name, timeout)
    return kernel


def _first_lines(text: str, n: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[:n])
