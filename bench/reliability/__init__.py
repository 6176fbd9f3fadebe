"""Reliability in figures: faults, load and bad input, measured in lab namespaces with real traffic.

Each scenario is a function that builds what it needs (a lab, or a node with the stand-in API
server), breaks something on purpose under steady TCP and UDP load, and returns its figures as
a dict. `python -m bench.reliability` runs them at full length and prints the table behind
docs/reliability.md; tests/soak runs each one short, with the same targets, in CI.

    rolling.py    rolling updates; kill -9 and restart (adoption)
    apisource.py  API server outage, 410 relist, dropped watches
    badinput.py   generated bad and odd manifests
    foreign.py    other tools' rules left byte-identical
    soak.py       memory under churn
    harness.py    the parts they share: load generators, rule snapshots, manifests
"""

from __future__ import annotations

from collections.abc import Callable


def _rolling(mode: str, quick: bool, progress: Callable[[str], None]) -> dict:
    from .rolling import rolling_updates
    return rolling_updates(mode, 3 if quick else 100, progress)


def _kill9(mode: str, quick: bool, progress: Callable[[str], None]) -> dict:
    from .rolling import kill9_restarts
    return kill9_restarts(mode, 3 if quick else 20, progress)


def _api(mode: str, quick: bool, progress: Callable[[str], None]) -> dict:
    from .apisource import api_faults
    return api_faults(mode, 5 if quick else 60, 3 if quick else 15, progress)


def _badinput(quick: bool, progress: Callable[[str], None]) -> list[dict]:
    from .badinput import daemon_batches, generated
    found = generated(500 if quick else 10_000, progress)
    corpus = found.pop("corpus")
    return [found, *[daemon_batches(mode, corpus, 2 if quick else 10, progress) for mode in MODES]]


def _foreign(mode: str, quick: bool, progress: Callable[[str], None]) -> dict:
    from .foreign import foreign_rules
    return foreign_rules(mode, progress)


def _soak(quick: bool, progress: Callable[[str], None]) -> list[dict]:
    from .soak import memory_soak
    return memory_soak(MODES, 60 if quick else 1800, progress=progress)


MODES = ("iptables", "nftables", "nftables-maps")
# name -> (run(mode=, quick=, progress=) or run(quick=, progress=), whether it runs per proxy mode);
# a run returns one result or a list of them
SCENARIOS: dict[str, tuple[Callable[..., dict | list[dict]], bool]] = {
    "rolling": (_rolling, True),
    "kill9": (_kill9, True),
    "api": (_api, True),
    "foreign": (_foreign, True),
    "badinput": (_badinput, False),
    "soak": (_soak, False),
}
