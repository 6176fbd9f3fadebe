"""Manifest loading at scale: `svcproxy render -f` of a 10k Services x 10 endpoints cluster.

Writes the cluster as a kubectl-style JSON List and as multi-document YAML, in two shapes:
- lean: the fields kube-proxy reads (what `kubectl get -o json` minus bookkeeping);
- full: also uid, resourceVersion, creationTimestamp, targetRef, zone, status (kubectl's output).
Then, in one run, side by side:
- whole process: `svcproxy render -f FILE > /dev/null` (wall time, peak RSS as last seen in /proc), median of --runs;
- in process, loading only (file -> model objects): today's loader vs the old one (PyYAML's C
  loader for both JSON and YAML, and the general EndpointSlice parser), on the same file.

    .venv/bin/python bench/bench_load.py [--services 10000] [--endpoints 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SVCPROXY = Path(sys.executable).parent / "svcproxy"


def service(i: int, full: bool) -> dict:
    ip = f"172.30.{i // 250}.{i % 250 + 1}"
    meta: dict = {"name": f"svc-{i}", "namespace": "default"}
    spec: dict = {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                                                                 "targetPort": 8080}],
                  "selector": {"app": f"svc-{i}"}, "type": "ClusterIP"}
    obj = {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}
    if full:
        meta.update(uid=f"5d2c1e0a-{i:04x}-4b1f-9a77-0242ac120002", resourceVersion=str(1000 + i),
                    creationTimestamp="2026-11-30T10:00:00Z", labels={"app": f"svc-{i}"})
        spec.update(internalTrafficPolicy="Cluster", ipFamilies=["IPv4"], ipFamilyPolicy="SingleStack",
                    sessionAffinity="None")
        obj["status"] = {"loadBalancer": {}}
    return obj


def endpoint_slice(i: int, endpoints: int, full: bool) -> dict:
    eps = []
    for j in range(endpoints):
        n = i * endpoints + j
        ep: dict = {"addresses": [f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"], "conditions": {"ready": True},
                    "nodeName": f"node-{j % 5}"}
        if full:
            ep["conditions"].update(serving=True, terminating=False)
            ep.update(zone="zone-a", targetRef={"kind": "Pod", "name": f"svc-{i}-pod-{j}", "namespace": "default",
                                                "uid": f"pod-{i}-{j}"})
        eps.append(ep)
    meta: dict = {"name": f"svc-{i}-abcde", "namespace": "default", "labels": {"kubernetes.io/service-name": f"svc-{i}"}}
    if full:
        meta.update(uid=f"slice-{i}", resourceVersion=str(5000 + i), generateName=f"svc-{i}-",
                    creationTimestamp="2026-11-30T10:00:00Z")
        meta["labels"]["endpointslice.kubernetes.io/managed-by"] = "endpointslice-controller.k8s.io"
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4", "metadata": meta,
            "endpoints": eps, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def write_cluster(directory: Path, services: int, endpoints: int, full: bool) -> tuple[Path, Path]:
    items = [service(i, full) for i in range(services)] + [endpoint_slice(i, endpoints, full) for i in range(services)]
    shape = "full" if full else "lean"
    as_json, as_yaml = directory / f"{shape}.json", directory / f"{shape}.yaml"
    as_json.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {}}, indent=2))
    with as_yaml.open("w") as f:
        yaml.dump_all(items, f, Dumper=yaml.CSafeDumper, default_flow_style=False, sort_keys=False)
    return as_json, as_yaml


def whole_process(path: Path, runs: int) -> tuple[float, float]:
    """Median wall seconds of `svcproxy render -f path`, and the largest max RSS in MiB."""
    times, rss = [], 0.0
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(SVCPROXY), "render", "-f", str(path)], stdout=subprocess.DEVNULL)
        peak = 0
        while proc.poll() is None:  # VmHWM is the process's own peak (ru_maxrss would count the fork)
            with contextlib.suppress(OSError, ValueError, IndexError):
                status = Path(f"/proc/{proc.pid}/status").read_text()
                peak = max(peak, int(status.split("VmHWM:")[1].split()[0]))
            time.sleep(0.01)
        times.append(time.perf_counter() - t0)
        assert proc.returncode == 0, f"svcproxy render -f {path} failed"
        rss = max(rss, peak / 1024)
    return statistics.median(times), rss


def load_now(path: Path) -> int:
    from svcproxy.model.load import load_paths

    objects = load_paths([path])
    return len(objects.services) + len(objects.slices)


def load_old(path: Path) -> int:
    """The loader before: PyYAML's C loader for every file, the general parser for every slice."""
    from svcproxy.gcpause import gc_paused
    from svcproxy.model.load import iter_documents
    from svcproxy.model.parse import PARSERS, parse_endpoint_slice_general

    parsers = {**PARSERS, "EndpointSlice": parse_endpoint_slice_general}
    docs = list(yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader))
    count = 0
    with gc_paused():
        for doc in docs:
            for _, raw in iter_documents(doc):
                parsers[raw["kind"]](raw)
                count += 1
    return count


def timed(fn, path: Path) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn(path)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"{args.services} Services x {args.endpoints} endpoints; whole process = median of {args.runs}")
    print(f"{'file':<11} {'MB':>5} {'render -f (whole)':>18} {'RSS MiB':>8} {'load now':>9} {'load old':>9} {'x':>5}")
    with tempfile.TemporaryDirectory(prefix="svcproxy-bench-load-") as tmp:
        for full in (False, True):
            for path in write_cluster(Path(tmp), args.services, args.endpoints, full):
                assert load_now(path) == load_old(path) == 2 * args.services
                wall, rss = whole_process(path, args.runs)
                now, old = timed(load_now, path), timed(load_old, path)
                mb = path.stat().st_size / 1e6
                print(f"{path.name:<11} {mb:>5.1f} {wall:>17.2f}s {rss:>8.0f} {now:>8.2f}s {old:>8.2f}s {old / now:>5.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
