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
