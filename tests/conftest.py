"""Shared test settings: kernel tests need root; everything else runs anywhere."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="kernel test: needs root for network namespaces (run as root)")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)


def _in_root_netns() -> bool:
    try:
        return os.stat("/proc/self/ns/net").st_ino == os.stat("/proc/1/ns/net").st_ino
    except OSError:
        return False


@pytest.fixture(autouse=True)
def _never_program_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CLI test that reaches the daemon in this process must not program the host's own
    netfilter: refuse it when this process is in the root network namespace (the daemon tests
    run it inside namespaces they made)."""
    import svcproxy.runtime.daemon as daemon

    real = daemon.run_daemon

    def guarded(opts):  # type: ignore[no-untyped-def]
        if _in_root_netns():
            raise AssertionError("test reached run_daemon in the root network namespace; "
                                 "run the daemon inside a namespace the test made")
        return real(opts)

    monkeypatch.setattr(daemon, "run_daemon", guarded)
