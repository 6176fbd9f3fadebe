"""The canary watch and the nftables failure counters against a recording dataplane (no kernel)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from svcproxy.runtime.syncer import canary_interval

from .fakes import RecordingDataplane, running
from .manifests_util import endpoint, endpoint_slice, service
from .test_sync_loop import make_daemon, until, write

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    write(d / "web.json", service("web", "172.30.0.10"), endpoint_slice("web-1", "web", [endpoint("10.0.1.10")]))
    return d


class CanaryDataplane(RecordingDataplane):
    """A dataplane whose canary someone can delete, and which counts stale-chain cleanup failures
    as the nftables one does."""

    mode = "nftables"

    def __init__(self) -> None:
        super().__init__()
        self.intact = True
        self.forgotten = 0
        self.cleanup_failures = 0

    def canary_intact(self) -> bool:
        return self.intact

    def forget(self) -> None:
        self.forgotten += 1

    def sync(self, state, changed=None):
        result = super().sync(state, changed)
        if changed is None:
            self.intact = True  # a full sync recreates it
        return result


def sample(daemon, name: str, family: str = "IPv4") -> float:
    return daemon.metrics.registry.get_sample_value(name, {"ip_family": family}) or 0.0


def test_canary_interval_is_well_within_the_sync_period() -> None:
    assert canary_interval(30) == 5.0
    assert canary_interval(1) == 0.5
    assert canary_interval(0.1) == 0.5
    assert canary_interval(3600) == 5.0


def test_a_missing_canary_forces_one_full_resync_and_is_counted(manifests: Path) -> None:
    async def main() -> None:
        dp = CanaryDataplane()
        daemon = make_daemon([manifests], dp, min_sync_period=0.0, sync_period=3600)
        syncer = daemon.syncer
        task = asyncio.create_task(daemon.run())
        watch = asyncio.create_task(syncer.watch_canary(interval=0.05, settle=0.0))
        try:
            await until(lambda: dp.calls)
            await asyncio.sleep(0.3)
            assert len(dp.calls) == 1, "an intact canary forces nothing"
            registry, family = daemon.metrics.registry, {"ip_family": "IPv4"}
            assert registry.get_sample_value("svcproxy_canary_resyncs_total", family) == 0, "a series at 0 from the start"
            dp.intact = False
            await until(lambda: len(dp.calls) == 2, 2)
            assert dp.calls[1][1] is None, "a full sync"
            assert dp.forgotten == 1, "the dataplane forgot its record of the kernel before it"
            await asyncio.sleep(0.3)
            assert len(dp.calls) == 2
            assert sample(daemon, "svcproxy_canary_resyncs_total") == 1
        finally:
            for t in (task, watch):
                t.cancel()
            await asyncio.gather(task, watch, return_exceptions=True)

    asyncio.run(main())


def test_nftables_sync_and_cleanup_failures_are_counted(manifests: Path) -> None:
    """In nftables mode (where kube-proxy registers them), from 0."""
    from svcproxy.runtime.daemon import Daemon, DaemonOptions
    from svcproxy.sources.manifests import ManifestSource

    from .test_sync_loop import CFG

    async def main() -> None:
        dp = CanaryDataplane()
        daemon = Daemon(DaemonOptions(cfg=CFG, mode="nftables", sources=[ManifestSource([manifests])],
                                      healthz_bind_address="", metrics_bind_address="", clear_conntrack=False,
                                      min_sync_period=0.0, sync_period=3600), dp=dp)
        for name in ("kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                     "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total"):
            assert sample(daemon, name) == 0 and daemon.metrics.registry.get_sample_value(
                name, {"ip_family": "IPv4"}) is not None, f"{name}: a series at 0 from the start"
        dp.fail_next = 2
        async with running(daemon):
            await until(lambda: dp.calls, 10)
            assert sample(daemon, "kubeproxy_sync_proxy_rules_nftables_sync_failures_total") == 2
            dp.cleanup_failures = 3  # the dataplane could not delete stale chains three times
            assert await daemon.syncer.sync_once()
            assert sample(daemon, "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total") == 3
            assert await daemon.syncer.sync_once()
            assert sample(daemon, "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total") == 3

    asyncio.run(main())
