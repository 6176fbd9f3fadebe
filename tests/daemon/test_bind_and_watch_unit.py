"""bindAddressHardFail and the --config watch, without the kernel (a recording dataplane)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from svcproxy.config import NodeConfig
from svcproxy.runtime.daemon import BindFailed, ConfigFileChanged, Daemon, DaemonOptions, watch_config_file
from svcproxy.sources.manifests import ManifestSource

from .fakes import RecordingDataplane, running
from .manifests_util import endpoint, endpoint_slice, service
from .test_health_metrics import free_port, get
from .test_sync_loop import until, write

pytestmark = pytest.mark.timeout(60)
CFG = NodeConfig(hostname="node-a", node_ips=("192.168.0.2",))


def _daemon(tmp_path: Path, healthz: str, hard_fail: bool) -> tuple[Daemon, RecordingDataplane]:
    m = tmp_path / "m"
    m.mkdir()
    write(m / "web.json", service("web", "172.30.0.10"), endpoint_slice("web-1", "web", [endpoint("10.0.1.10",
                                                                                                  "node-a")]))
    dp = RecordingDataplane()
    opts = DaemonOptions(cfg=CFG, mode="fake", sources=[ManifestSource([m])], healthz_bind_address=healthz,
                         metrics_bind_address="", min_sync_period=0.0, clear_conntrack=False,
                         bind_address_hard_fail=hard_fail)
    return Daemon(opts, dp=dp), dp


def test_a_taken_healthz_port_is_fatal_with_hard_fail(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        daemon, _ = _daemon(tmp_path, f"127.0.0.1:{taken.getsockname()[1]}", hard_fail=True)
        with pytest.raises(BindFailed, match="healthz server failed.*bindAddressHardFail"):
            asyncio.run(asyncio.wait_for(daemon.run(), 10))


def test_a_taken_healthz_port_is_retried_and_the_proxy_goes_on(tmp_path: Path) -> None:
    port = free_port()
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(("127.0.0.1", port))
    taken.listen()
    daemon, dp = _daemon(tmp_path, f"127.0.0.1:{port}", hard_fail=False)

    async def scenario() -> None:
        async with running(daemon):
            await until(lambda: dp.calls)  # programmed while the port is taken
            assert dp.endpoints("default/web") == ["10.0.1.10:8080"]
            taken.close()  # freed: the next retry (every 5 s) binds it
            status = None
            for _ in range(80):
                try:
                    status, _ = await get(f"http://127.0.0.1:{port}/healthz")
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            assert status == 200

    asyncio.run(scenario())


def test_config_watch_sees_a_configmap_swap_and_an_edit(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "config.conf").write_text("a")
    os.symlink("v1", tmp_path / "..data")
    os.symlink("..data/config.conf", tmp_path / "config.conf")
    path = str(tmp_path / "config.conf")

    async def changed_after(change) -> None:  # type: ignore[no-untyped-def]
        watch = asyncio.create_task(watch_config_file(path, interval=0.05))
        await asyncio.sleep(0.2)
        assert not watch.done(), "an unchanged file is no reason to stop"
        change()
        with pytest.raises(ConfigFileChanged, match="was updated"):
            await asyncio.wait_for(watch, 2)

    def swap() -> None:
        (tmp_path / "v2").mkdir()
        (tmp_path / "v2" / "config.conf").write_text("b")
        os.symlink("v2", tmp_path / "..data.tmp")
        os.rename(tmp_path / "..data.tmp", tmp_path / "..data")

    asyncio.run(changed_after(swap))
    asyncio.run(changed_after(lambda: (tmp_path / "v2" / "config.conf").write_text("longer")))
