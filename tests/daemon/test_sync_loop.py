"""The sync loop and the manifests source against a recording dataplane (no kernel)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from svcproxy.config import NodeConfig
from svcproxy.runtime.daemon import Daemon, DaemonOptions
from svcproxy.sources.manifests import ManifestSource

from .fakes import RecordingDataplane, running
from .manifests_util import endpoint, endpoint_slice, service

pytestmark = pytest.mark.timeout(60)
CFG = NodeConfig(hostname="node-a", node_ips=("192.168.0.2",))


def write(path: Path, *objs: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n---\n".join(json.dumps(o) for o in objs))
    tmp.rename(path)


async def until(cond, timeout: float = 5.0) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)
    return time.monotonic() - t0


def make_daemon(paths: list[Path], dp: RecordingDataplane, **kw) -> Daemon:
    opts = DaemonOptions(cfg=CFG, mode="fake", sources=[ManifestSource(paths)], healthz_bind_address="",
                         metrics_bind_address="", clear_conntrack=False, **kw)
    return Daemon(opts, dp=dp)


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    write(d / "web.json", service("web", "172.30.0.10"),
          endpoint_slice("web-1", "web", [endpoint("10.0.1.10", "node-a"), endpoint("10.0.2.10", "node-b")]))
    return d


def test_edits_new_and_removed_files_reach_the_dataplane(manifests: Path) -> None:
    async def main() -> None:
        dp = RecordingDataplane()
        daemon = make_daemon([manifests], dp, min_sync_period=0.0)
        async with running(daemon):
            await until(lambda: dp.calls)
            assert dp.calls[0][1] is None, "the first sync is a full one"
            assert dp.endpoints("default/web") == ["10.0.1.10:8080", "10.0.2.10:8080"]
            # edit: scale down to one endpoint; a partial sync names only that service
            write(manifests / "web.json", service("web", "172.30.0.10"),
                  endpoint_slice("web-1", "web", [endpoint("10.0.1.10", "node-a")]))
            took = await until(lambda: dp.endpoints("default/web") == ["10.0.1.10:8080"])
            assert took < 1.0
            assert dp.calls[-1][1] == ["default/web"]
            # a new file adds a service
            write(manifests / "dns.json", service("dns", "172.30.0.53", 53, "UDP"),
                  endpoint_slice("dns-1", "dns", [endpoint("10.0.1.53")], 53, "UDP"))
            await until(lambda: "default/dns" in dp.last.services)
            assert dp.calls[-1][1] == ["default/dns"]
            # removing the file removes the service
            (manifests / "dns.json").unlink()
            await until(lambda: "default/dns" not in dp.last.services)
            assert "default/web" in dp.last.services

    asyncio.run(main())


def test_bad_edit_keeps_last_good_version(manifests: Path) -> None:
    async def main() -> None:
        dp = RecordingDataplane()
        daemon = make_daemon([manifests], dp, min_sync_period=0.0)
        async with running(daemon):
            await until(lambda: dp.calls)
            bad = service("web", "172.30.0.999")
            write(manifests / "web.json", bad, service("other", "172.30.0.11"),
                  endpoint_slice("web-1", "web", [endpoint("10.0.1.10", "node-a")]))
            await until(lambda: "default/other" in dp.last.services)
            web = dp.last.services["default/web"]
            assert web.ports[0].cluster_ip == "172.30.0.10", "last good Service kept"
            assert dp.endpoints("default/web") == ["10.0.1.10:8080"], "its slice still follows edits"
            # a file that is not YAML at all keeps everything it held
            (manifests / "web.json").write_text("{ not yaml: [")
            await asyncio.sleep(0.6)
            assert "default/other" in dp.last.services and "default/web" in dp.last.services

    asyncio.run(main())


def test_min_sync_period_coalesces_bursts(manifests: Path) -> None:
    async def main() -> None:
        dp = RecordingDataplane()
        daemon = make_daemon([manifests], dp, min_sync_period=0.5, sync_period=60)
        async with running(daemon):
            await until(lambda: dp.calls)
            store = daemon.store
            n = len(dp.calls)
            t0 = time.monotonic()
            for i in range(20):  # a burst of endpoint changes, straight into the store
                store.put("manifests", _slice(i))
                await asyncio.sleep(0.01)
            await until(lambda: dp.endpoints("default/web") == [f"10.0.9.{19}:8080"])
            assert len(dp.calls) - n <= 2, "a burst is coalesced into at most two syncs"
            assert time.monotonic() - t0 >= 0.4, "no sync sooner than min-sync-period after the previous one"

    asyncio.run(main())


def _slice(i: int):
    from svcproxy.model.parse import parse_endpoint_slice

    return parse_endpoint_slice(endpoint_slice("web-1", "web", [endpoint(f"10.0.9.{i}")]))


def test_periodic_full_sync_and_retry_after_failure(manifests: Path) -> None:
    async def main() -> None:
        dp = RecordingDataplane()
        daemon = make_daemon([manifests], dp, min_sync_period=0.0, sync_period=0.3)
        async with running(daemon):
            await until(lambda: len(dp.calls) >= 3)
            assert all(changed is None for _, changed in dp.calls), "sync-period syncs are full"
            dp.fail_next = 2
            failures = daemon.syncer.metrics.restore_failures._value.get()
            n = len(dp.calls)
            daemon.store.put("manifests", _slice(7))
            await until(lambda: len(dp.calls) > n, timeout=10)
            assert dp.calls[-1][1] is None, "the sync after a failure is full"
            assert dp.endpoints("default/web") == ["10.0.9.7:8080"]
            assert daemon.syncer.metrics.restore_failures._value.get() == failures + 2

    asyncio.run(main())


def test_no_rules_before_every_source_synced(manifests: Path) -> None:
    async def main() -> None:
        dp = RecordingDataplane()
        daemon = make_daemon([manifests], dp, min_sync_period=0.0)
        daemon.store.add_source("api")  # a second source that has not listed yet
        async with running(daemon):
            await asyncio.sleep(0.3)
            assert dp.calls == []
            daemon.store.mark_synced("api")
            await until(lambda: dp.calls)

    asyncio.run(main())


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        ManifestSource([tmp_path / "nope.yaml"])


def test_slow_full_syncs_stretch_the_period_and_partial_syncs_go_between(manifests: Path) -> None:
    async def main() -> None:
        dp = RecordingDataplane()
        dp.full_delay = 0.25
        daemon = make_daemon([manifests], dp, min_sync_period=0.0, sync_period=0.1)
        async with running(daemon):
            await until(lambda: dp.calls)
            assert daemon.syncer.full_sync_interval >= 1.0, "4 x the last full sync"
            await asyncio.sleep(0.2)
            daemon.store.put("manifests", _slice(3))
            took = await until(lambda: dp.endpoints("default/web") == ["10.0.9.3:8080"])
            assert took < 0.2 and dp.calls[-1][1] == ["default/web"], "a partial sync, not queued behind a full one"
            await asyncio.sleep(1.5)
            fulls = sum(changed is None for _, changed in dp.calls)
            assert 2 <= fulls <= 3, fulls

    asyncio.run(main())


def test_single_file_path_followed_through_rename_and_in_place_edits(tmp_path: Path) -> None:
    f = tmp_path / "web.yaml"
    write(f, service("web", "172.30.0.10"), endpoint_slice("web-1", "web", [endpoint("10.0.1.10")]))
    (tmp_path / "unrelated.yaml").write_text("not: [watched")

    async def main() -> None:
        dp = RecordingDataplane()
        daemon = make_daemon([f], dp, min_sync_period=0.0)
        async with running(daemon):
            await until(lambda: dp.calls)
            write(f, service("web", "172.30.0.10"), endpoint_slice("web-1", "web", [endpoint("10.0.1.11")]))
            await until(lambda: dp.endpoints("default/web") == ["10.0.1.11:8080"])  # replaced by rename
            f.write_text(json.dumps(service("web", "172.30.0.10")) + "\n---\n" +
                         json.dumps(endpoint_slice("web-1", "web", [endpoint("10.0.1.12")])))
            await until(lambda: dp.endpoints("default/web") == ["10.0.1.12:8080"])  # edited in place
            assert len(daemon.store.services) == 1, "files next to it are not read"

    asyncio.run(main())


def test_stale_udp_conntrack_is_cleared_before_the_sync_counts_as_done(manifests: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by bench/reliability: the last-sync timestamp (and the sync's log line) came before
    the conntrack cleanup, so whoever waited for the sync to remove a pod (a lab, a test, an
    operator watching the metric) cut UDP flows still DNATed to it."""
    from svcproxy.runtime import conntrack

    seen: list[tuple[int, list[str]]] = []  # (syncs counted, serving endpoints) when the reconcile ran

    async def main() -> None:
        dp = RecordingDataplane()
        opts = DaemonOptions(cfg=CFG, mode="fake", sources=[ManifestSource([manifests])], healthz_bind_address="",
                             metrics_bind_address="", clear_conntrack=True, min_sync_period=0.0)
        daemon = Daemon(opts, dp=dp)

        def reconcile(state, family):
            eps = [str(e) for eps in state.services["default/dns"].endpoints.values() for e in eps]
            seen.append((daemon.syncer.syncs, eps))
            return conntrack.Reconciled(0, 0.0)

        monkeypatch.setattr(conntrack, "reconcile", reconcile)
        async with running(daemon):
            await until(lambda: dp.calls)
            write(manifests / "dns.json", service("dns", "172.30.0.53", 53, "UDP"),
                  endpoint_slice("dns-1", "dns", [endpoint("10.0.1.53"), endpoint("10.0.1.54")], 53, "UDP"))
            # counted, not just applied: the dataplane returns before the reconcile runs
            await until(lambda: "default/dns" in getattr(daemon.syncer.programmed, "services", {}))
            done = daemon.syncer.syncs
            write(manifests / "dns.json", service("dns", "172.30.0.53", 53, "UDP"),
                  endpoint_slice("dns-1", "dns", [endpoint("10.0.1.53")], 53, "UDP"))
            await until(lambda: daemon.syncer.syncs > done)
            assert seen[-1] == (done, ["10.0.1.53:53"]), \
                "the removed endpoint's entries were cleared before the sync was counted"

    asyncio.run(main())


def test_periodic_full_sync_logs_what_it_changed(manifests: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The full sync that repairs drift says it changed nothing when nothing changed (it used to
    say "1 changed", counting every service)."""
    import logging

    async def main() -> None:
        dp = RecordingDataplane()
        daemon = make_daemon([manifests], dp, min_sync_period=0.0, sync_period=0.2)
        async with running(daemon):
            await until(lambda: len(dp.calls) >= 3)  # the first sync, then periodic ones
        assert daemon.syncer.last is not None and daemon.syncer.last.full and daemon.syncer.last.changed == 0

    with caplog.at_level(logging.INFO, logger="svcproxy.runtime.syncer"):
        asyncio.run(main())
    full = [r.getMessage() for r in caplog.records if " full sync: " in r.getMessage()]
    assert "1 service(s), 1 changed," in full[0], full[0]
    assert all(", 0 changed," in m for m in full[1:]) and len(full) >= 3, full


def test_changes_in_a_sync_still_running_count_as_pending(manifests: Path) -> None:
    """Health is answered while a sync runs in its thread: the changes it took are not in the
    kernel yet, so /healthz and /livez must still see how long they have waited (a stuck or
    failing sync must not look healthy for the length of its run)."""
    async def main() -> None:
        dp = RecordingDataplane()
        daemon = make_daemon([manifests], dp, min_sync_period=0.0, sync_period=60)
        async with running(daemon):
            try:
                await until(lambda: dp.calls)
                assert daemon.syncer.pending_since() is None
                dp.gate, dp.entered = threading.Event(), threading.Event()
                before = time.monotonic()
                daemon.store.put("manifests", _slice(3))
                await until(dp.entered.is_set)
                since = daemon.syncer.pending_since()
                assert since is not None and since >= before - 0.001, "the in-flight change is pending"
                dp.gate.set()
                await until(lambda: dp.endpoints("default/web") == ["10.0.9.3:8080"])
                assert daemon.syncer.pending_since() is None
            finally:  # release the blocked sync thread before the daemon stops
                if dp.gate is not None:
                    dp.gate.set()

    asyncio.run(main())


def test_a_log_written_beside_the_manifests_does_not_wake_the_source(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`svcproxy run -f dir/web.yaml 2> dir/svcproxy.log`: the log's writes are not manifest
    changes (each wake-up used to log a line, itself a change: a loop without end). A
    ConfigMap volume's `..data` symlink swap still counts."""
    from svcproxy.sources import manifests as m

    f = tmp_path / "web.yaml"
    write(f, service("web", "172.30.0.10"), endpoint_slice("web-1", "web", [endpoint("10.0.1.10")]))
    loads = []
    real = m.ManifestSource.load
    monkeypatch.setattr(m.ManifestSource, "load", lambda self, store: (loads.append(1), real(self, store)))

    async def main() -> None:
        dp = RecordingDataplane()
        daemon = make_daemon([f], dp, min_sync_period=0.0)
        async with running(daemon):
            await until(lambda: dp.calls)
            await asyncio.sleep(0.6)
            before = len(loads)
            log = tmp_path / "svcproxy.log"
            for i in range(30):
                with log.open("a") as out:
                    out.write(f"line {i}\n")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.8)  # past the watch's 400 ms debounce
            assert len(loads) == before, "writes to a log beside the manifest woke the source"
            # the file itself still counts
            write(f, service("web", "172.30.0.10"), endpoint_slice("web-1", "web", [endpoint("10.0.1.11")]))
            await until(lambda: dp.endpoints("default/web") == ["10.0.1.11:8080"])

    asyncio.run(main())


def test_what_counts_as_a_manifest_change(tmp_path: Path) -> None:
    from svcproxy.sources.manifests import relevant

    given = tmp_path / "services.txt"
    given.write_text("")
    (tmp_path / "svcproxy.log").write_text("x")
    (tmp_path / "web.yaml.swp").write_text("x")
    (tmp_path / "..2026_12_08").mkdir()
    (tmp_path / "..data").symlink_to(tmp_path / "..2026_12_08")
    files = {str(given)}
    assert not relevant(str(tmp_path / "svcproxy.log"), files)
    assert not relevant(str(tmp_path / "web.yaml.swp"), files), "an editor's swap file"
    assert relevant(str(given), files), "a file given with -f, whatever its name"
    assert relevant(str(tmp_path / "web.yaml"), files), "a manifest (here: removed)"
    assert relevant(str(tmp_path / "..data"), files) and relevant(str(tmp_path / "..2026_12_08"), files)
    assert relevant(str(tmp_path / "gone.log"), files), "a removed path: cannot tell, so it counts"
