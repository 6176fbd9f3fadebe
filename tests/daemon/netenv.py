"""A minimal node + pods setup in network namespaces for end-to-end daemon tests.

    node ns (dmn-<id>-node): svcproxy run, the clients; veth dmnveth 10.0.1.1/24,
                             service CIDR 172.30.0.0/16 routed out of it
    pod ns  (dmn-<id>-pod):  veth dmnpod with every pod IP 10.0.1.10-49; one server process

Everything is created under the `dmn` prefix and removed by close() (the fixtures call it in
their teardown), including the processes started in the namespaces.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
PROGS = str(Path(__file__).with_name("nsprogs.py"))
NODE_IP = "10.0.1.1"
POD_IPS = [f"10.0.1.{i}" for i in range(10, 50)]
_ids = itertools.count()


def sh(*argv: str, check: bool = True, input: str | None = None) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, input=input)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip()}")
    return p.stdout


class Client:
    """A client process in the node namespace; its events are collected in a thread."""

    def __init__(self, env: NetEnv, kind: str, ip: str, port: int) -> None:
        self.proc = env.spawn(env.node, [PYTHON, PROGS, f"{kind}-client", ip, str(port)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def stop(self) -> list[dict]:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(10)
        self._reader.join(5)
        return self.events

    def since(self, t: float) -> list[dict]:
        return [e for e in list(self.events) if e["t"] >= t]

    def failures(self) -> list[dict]:
        return [e for e in self.events if not e["ok"]]


class NetEnv:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{next(_ids)}"
        self.node, self.pod = f"dmn-{tag}-node", f"dmn-{tag}-pod"
        self.procs: list[subprocess.Popen] = []
        self.server: subprocess.Popen | None = None
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        sh("ip", "netns", "add", self.node)
        sh("ip", "netns", "add", self.pod)
        n, p = ["ip", "-n", self.node], ["ip", "-n", self.pod]
        sh(*n, "link", "set", "lo", "up")
        sh(*p, "link", "set", "lo", "up")
        sh(*n, "link", "add", "dmnveth", "type", "veth", "peer", "name", "dmnpod", "netns", self.pod)
        sh(*n, "addr", "add", f"{NODE_IP}/24", "dev", "dmnveth")
        sh(*n, "link", "set", "dmnveth", "up")
        sh(*n, "route", "add", "172.30.0.0/16", "dev", "dmnveth")
        batch = "".join(f"addr add {ip}/24 dev dmnpod\n" for ip in POD_IPS)
        sh("ip", "-n", self.pod, "-batch", "-", input=batch)
        sh(*p, "link", "set", "dmnpod", "up")
        sh(*p, "route", "add", "default", "via", NODE_IP)
        self.server = self.spawn(self.pod, [PYTHON, PROGS, "server"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)

    def spawn(self, ns: str, argv: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        self.procs.append(proc)
        return proc

    def exec(self, ns: str, *argv: str, check: bool = True) -> str:
        return sh("ip", "netns", "exec", ns, *argv, check=check)

    def _server(self, line: str) -> None:
        assert self.server and self.server.stdin and self.server.stdout
        self.server.stdin.write(line + "\n")
        self.server.stdin.flush()
        assert self.server.stdout.readline().strip() == "ok"

    def serve(self, kind: str, ips: list[str], port: int) -> None:
        for ip in ips:
            self._server(f"{kind} {ip} {port}")

    def stop_serving(self, ip: str) -> None:
        self._server(f"stop {ip}")

    def client(self, kind: str, ip: str, port: int) -> Client:
        return Client(self, kind, ip, port)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for ns in (self.node, self.pod):
            # anything still running in the namespace (started by ip netns exec) goes too
            for pid in sh("ip", "netns", "pids", ns, check=False).split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "delete", ns, check=False)


class Daemon:
    """`svcproxy run` in the node namespace, logging to a file the test can wait on."""

    def __init__(self, env: NetEnv, manifests: Path | None, mode: str, log: Path, *extra: str) -> None:
        self.env, self.manifests, self.mode, self.log_path, self.extra = env, manifests, mode, log, extra
        self.proc: subprocess.Popen | None = None
        self.environ: dict[str, str] = {}  # added to the daemon's environment (e.g. a PATH with wrappers)
        self.one_family = True  # pin IPv4 (see start); False leaves run's default families

    def start(self) -> Daemon:
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in stop()
        source = ["-f", str(self.manifests)] if self.manifests else []
        mode, _, layout = self.mode.partition("-")  # "nftables-maps": nftables with the maps layout
        # these tests look at one family: IPv4 unless they ask for more (a second --node-ip) or
        # another (--ip-family); run's own default, dual-stack where the host can, has its test
        pinned = self.one_family and not {"--ip-family", "--node-ip"} & set(self.extra)
        single = ["--ip-family", "IPv4"] if pinned else []
        argv = [str(Path(PYTHON).with_name("svcproxy")), "run", *source, "--proxy-mode", mode,
                *(["--nftables-layout", layout] if layout else []),
                "--hostname-override", "node-a", "--node-ip", NODE_IP, *single, "--min-sync-period", "0",
                "--conntrack-max-per-core=0",  # nf_conntrack_max is read-only in a namespace
                "--healthz-bind-address", "127.0.0.1:10256", "--metrics-bind-address", "127.0.0.1:10249",
                *self.extra]
        self.proc = self.env.spawn(self.env.node, argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, **self.environ} if self.environ else None)
        return self

    def syncs(self) -> int:
        return sum("svcproxy.runtime.syncer: " in line and " sync: " in line
                   for line in self.log_path.read_text().splitlines())

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_sync(self, after: int, timeout: float = 20) -> int:
        """Wait until more than `after` syncs have succeeded; returns the new count."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            n = self.syncs()
            if n > after:
                return n
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"svcproxy run exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            time.sleep(0.01)
        raise AssertionError(f"no sync within {timeout}s:\n{self.log()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> int:
        """SIGTERM, as the kubelet does; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


class ApiServer:
    """The stand-in API server as a process in the node namespace, driven over its stdin."""

    def __init__(self, env: NetEnv, port: int = 18080) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = env.spawn(env.node, [PYTHON, str(Path(__file__).with_name("apiserver.py")), "--port", str(port),
                                         "--commands"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("serving"), line

    def _send(self, cmd: dict) -> None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def apply(self, *objs: dict) -> None:
        self._send({"apply": list(objs)})

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self._send({"delete": [kind, namespace, name]})

    def compact(self) -> None:
        """Forget the history: a watch resuming from an older resourceVersion gets 410 Gone."""
        self._send({"compact": True})

    def drop_watches(self) -> None:
        self._send({"drop_watches": True})

    def reachable(self, up: bool) -> None:
        """False: connections are refused (the objects stay, and can still be changed)."""
        self._send({"reachable": up})

    def slow_lists(self, seconds: float) -> None:
        self._send({"list_delay": seconds})

    def fail_requests(self, n: int) -> None:
        """The next n requests are answered 500 (an overloaded or broken API server)."""
        self._send({"fail": n})
