"""Fixtures shared by the daemon's kernel tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .netenv import NetEnv


@pytest.fixture
def env() -> Iterator[NetEnv]:
    """A node and a pod namespace (netenv.py), removed with everything in them afterwards."""
    e = NetEnv()
    try:
        yield e
    finally:
        e.close()
