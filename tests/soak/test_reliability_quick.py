"""The CI length of bench/reliability: every scenario, short, with the same targets as the full
run (docs/reliability.md). Real kernels, real traffic, in namespaces the scenarios make and remove.

Each scenario found a bug when it was first run; the assertions are the ones those bugs broke.
"""

from __future__ import annotations

import pytest

from bench.reliability import MODES, SCENARIOS
from bench.reliability.badinput import daemon_batches, generated

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(300)]


def run(name: str, mode: str | None = None) -> dict | list[dict]:
    fn, per_mode = SCENARIOS[name]
    quiet = lambda msg: None  # noqa: E731
    return fn(mode=mode, quick=True, progress=quiet) if per_mode else fn(quick=True, progress=quiet)


def no_failures(res: dict) -> None:
    assert res["attempts"] > 100, "the load ran"
    assert res["failures"] == 0, f"{res['failures']} failed connection(s)/queries: {res['errors']}"


@pytest.mark.parametrize("mode", MODES)
def test_rolling_updates_lose_no_connection(mode: str) -> None:
    res = run("rolling", mode)
    no_failures(res)
    assert res["applies"] == 12
    assert res["manifest_to_every_node"]["max_ms"] < 2000


@pytest.mark.parametrize("mode", MODES)
def test_kill9_restart_adopts_the_rules_as_they_are(mode: str) -> None:
    res = run("kill9", mode)
    no_failures(res)
    assert res["rules_changed"] == [], "a restarted proxy leaves the rules byte-identical"
    assert res["restart_to_synced"]["max_ms"] < 5000


@pytest.mark.parametrize("mode", MODES)
def test_api_faults_keep_traffic_and_changes_land_after(mode: str) -> None:
    res = run("api", mode)
    no_failures(res)
    assert res["outage_change_landed_after_back_s"] < 15, "back within the retry cap (10 s +20%) and a sync"
    assert res["relist_change_landed_s"] < 3
    assert res["change_after_drop"]["max_ms"] < 2000, "a dropped watch resumes at once"
    assert res["daemon_exit"] == 0


@pytest.mark.parametrize("mode", [*MODES, "userspace"])
def test_foreign_rules_stay_byte_identical(mode: str) -> None:
    from bench.reliability.foreign import foreign_rules

    res = foreign_rules(mode, progress=lambda m: None)
    assert res["differences"] == {}, res
    assert res["ours_left_after_cleanup"] == []
    assert res["ok"]


def test_generated_bad_manifests() -> None:
    res = generated(500, progress=lambda m: None)  # raises on any finding, with the example
    assert res["examples"] == 500
    assert res["named"] + res["both"] > 250, "most mutations make the object bad, and it is named"
    assert res["kernel_loaded"] == 5
    for mode in ("iptables", "nftables-maps"):
        d = daemon_batches(mode, res["corpus"][:300], 2, progress=lambda m: None)
        assert d["tracebacks"] == 0, d.get("first_traceback")
        assert d["daemon_exit"] == 0
        assert d["errors_logged"] > 100, "the bad objects are named in the log"
        assert d["attempts"] > 50 and d["failures"] == 0, "the good Service kept serving"


def test_memory_soak_short() -> None:
    for res in run("soak"):
        no_failures(res)
        assert res["syncs"] > 50
        assert res["rss_growth_pct"] < 5, res
