"""Fixtures of the lab tests: lab state in a temporary directory, and nothing left behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from svcproxy.lab import Lab


@pytest.fixture
def lab_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Lab state under tmp_path, for this process and the commands it runs."""
    monkeypatch.setenv("SVCPROXY_LAB_DIR", str(tmp_path / "labs"))
    return tmp_path / "labs"


@pytest.fixture
def cleanup_prefix(lab_dir: Path) -> Iterator[list[str]]:
    """Whatever a test leaves behind is removed (the test itself checks that `lab down` did it)."""
    prefixes: list[str] = []
    yield prefixes
    for p in prefixes:
        Lab(p).down()
