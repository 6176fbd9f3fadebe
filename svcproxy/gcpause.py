"""Pausing Python's cyclic garbage collector around bulk work (render, trace, a full sync).

That work allocates hundreds of thousands of small objects that live on and form no cycles; with
a large heap alive, collector passes would re-walk all of it and make the work superlinear.
What the work leaves behind is collected as usual afterwards."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
