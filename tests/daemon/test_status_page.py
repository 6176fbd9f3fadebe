"""The status page in a real browser: headless Chromium in the node's namespace opens the page of
`svcproxy run` under real traffic; counters move, the spread is drawn, the trace form draws a
picture, names stay text, and the page fits a phone-width window."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import pytest

from svcproxy.lab.status_page import PageForward

from .browser import CHROMIUM, Browser
from .manifests_util import endpoint, endpoint_slice, service
from .netenv import POD_IPS, Daemon, NetEnv

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(150),
              pytest.mark.skipif(not CHROMIUM, reason="chromium is not installed (scripts/setup.sh --test installs it)")]
WEB_IP = "172.30.0.10"
EVIL = "x<img/src/onerror=document.body.dataset.pwned=1>"  # a name that is markup if put in as HTML
URL = "http://127.0.0.1:10263/"
SHOT = os.environ.get("SVCPROXY_STATUS_SCREENSHOT")  # where to keep the screenshot (docs/ when refreshing it)


def counts(b: Browser) -> dict[str, int]:
    return b.eval("""Object.fromEntries([...document.querySelectorAll('[data-service="default/web"] .ep')]
                     .map(r => [r.dataset.endpoint, Number(r.querySelector('.n').dataset.connections)]))""")


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_status_page_in_a_browser(env: NetEnv, tmp_path: Path, mode: str) -> None:
    eps = POD_IPS[:3]
    manifest = tmp_path / "m.json"
    bad = service("broken", "300.1.1.1")
    manifest.write_text(json.dumps({"kind": "List", "items": [
        service("web", WEB_IP, 80, target=8080), endpoint_slice("web-1", "web", [endpoint(ip, "node-a") for ip in eps]),
        service(EVIL, "172.30.0.11"), bad]}))
    env.serve("tcp", eps, 8080)
    env.exec(env.node, "sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")  # per namespace: packets too
    daemon = Daemon(env, manifest, mode, tmp_path / "svcproxy.log", "--status-bind-address", "127.0.0.1:10263").start()
    daemon.wait_sync(0)
    browser = Browser(env.node)
    client = None
    try:
        browser.open(URL)
        browser.until("Number(document.body.dataset.refreshes) >= 1")
        assert browser.eval("document.getElementById('node').textContent") == "node-a"
        assert browser.eval("document.getElementById('mode').textContent") == mode
        assert sorted(counts(browser)) == sorted(f"{ip}:8080" for ip in eps)
        before = sum(counts(browser).values())
        assert before == 0  # counted since the page opened

        client = env.client("tcp", WEB_IP, 80)
        time.sleep(3)
        browser.until("Number(document.body.dataset.refreshes) >= 3")
        after = counts(browser)
        assert sum(after.values()) >= 20, after  # the client connects every few ms
        assert all(n > 0 for n in after.values()), after  # the spread reaches every endpoint
        widths = browser.eval("[...document.querySelectorAll('[data-service=\"default/web\"] .fill')]"
                              ".map(f => parseFloat(f.style.width))")
        assert max(widths) == 100 and min(widths) > 0, widths  # a bar per endpoint, the busiest full
        packets = browser.eval("[...document.querySelectorAll('[data-service=\"default/web\"] .n')]"
                               ".map(n => Number(n.dataset.packets))")
        assert all(p >= 3 for p in packets) and sum(packets) > sum(after.values()), packets  # SYN, ACK, data...
        moved = sum(counts(browser).values())
        time.sleep(1.5)
        assert sum(counts(browser).values()) > moved  # live: no reload, the numbers keep moving

        # the bad objects are listed with their field; the markup name (refused: a Service name
        # must be an RFC 1035 label) is shown as text, not run
        problems = browser.eval("document.getElementById('problems').textContent")
        assert "default/broken" in problems and "spec.clusterIP" in problems
        assert EVIL in problems and "metadata.name" in problems
        assert browser.eval("document.body.dataset.pwned") is None
        assert browser.eval("document.querySelectorAll('#services img, #problems img').length") == 0
        assert browser.eval("document.querySelectorAll('#syncs tr').length") >= 1

        # the trace form: the tracer's answer on this node's live rules, with its picture
        form = json.dumps({"source": "10.0.1.1", "destination": WEB_IP, "port": "80"})
        browser.eval(f"""(() => {{ const v = {form};
            for (const k in v) document.getElementById('trace-' + k).value = v[k];
            document.getElementById('trace-go').click(); }})()""")
        browser.until("document.body.dataset.traced === '1'")
        browser.until("document.getElementById('trace-picture').naturalWidth > 100")
        text = browser.eval("document.getElementById('trace-text').textContent")
        assert all(f"{ip}:8080" in text for ip in eps), text
        if SHOT:
            Path(SHOT).write_bytes(browser.screenshot())

        # `lab status --page`: the same page from this namespace's loopback, through the forward
        forward = PageForward(env.node).start()
        try:
            with urllib.request.urlopen(forward.url + "api/status", timeout=10) as r:
                assert json.load(r)["node"] == "node-a"
            with urllib.request.urlopen(forward.url, timeout=10) as r:
                assert b"svcproxy status" in r.read()
        finally:
            forward.close()

        # a phone-width window: nothing wider than the screen
        browser.call("Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 1,
                                                             "mobile": True})
        browser.until("document.documentElement.clientWidth === 390")
        assert browser.eval("document.documentElement.scrollWidth") <= 390
    finally:
        if client is not None:
            client.stop()
        browser.close()
        daemon.stop()
