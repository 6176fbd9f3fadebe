"""Regenerate docs/status-page.png: test-node's status page in a lab built from examples/cluster.

    .venv/bin/python -m tests.daemon.screenshot_status [OUT.png]     (as root; takes a minute)

A two-node lab (nftables mode) from examples/cluster, traffic to the web Service from a pod and
from outside through the NodePort, the page opened in headless Chromium through `lab status
--page`, a packet traced from a pod to web's ClusterIP; then the lab is removed.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from .browser import Browser

ROOT = Path(__file__).resolve().parents[2]
SVCPROXY = str(Path(sys.executable).with_name("svcproxy"))
PREFIX = "svdoc"  # a lab of its own: another one (svl) may be running


def lab(*args: str) -> str:
    return subprocess.run([SVCPROXY, "lab", *args, "--prefix", PREFIX], check=True, capture_output=True,
                          text=True, cwd=ROOT).stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(out: Path) -> None:
    subprocess.run([SVCPROXY, "lab", "down", "--prefix", PREFIX], capture_output=True, cwd=ROOT)
    lab("up", "-f", "examples/cluster", "--proxy-mode", "nftables")
    port = free_port()
    page = subprocess.Popen([SVCPROXY, "lab", "status", "--page", "test-node", "--port", str(port), "--prefix", PREFIX],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    browser = Browser()
    try:
        time.sleep(2)
        browser.open(f"http://127.0.0.1:{port}/", width=1100, height=900)
        browser.until("Number(document.body.dataset.refreshes) >= 1", timeout=30)
        for _ in range(3):  # connections counted since the page opened: from a pod, and from outside
            lab("curl", "web", "-n", "60")
            lab("curl", "web", "--from", "outside", "-n", "60")
        browser.until("Number(document.body.dataset.refreshes) >= 4", timeout=30)
        browser.eval("""(() => { const v = {source: '10.0.1.20', destination: '172.30.0.10', port: '80'};
            for (const k in v) document.getElementById('trace-' + k).value = v[k];
            document.getElementById('trace-go').click(); })()""")
        browser.until("document.body.dataset.traced === '1'", timeout=30)
        browser.until("document.getElementById('trace-picture').naturalWidth > 100", timeout=30)
        time.sleep(1.5)  # one more refresh of the counters
        out.write_bytes(browser.screenshot())
        print(f"wrote {out}")
    finally:
        browser.close()
        page.terminate()
        page.wait(10)
        subprocess.run([SVCPROXY, "lab", "down", "--prefix", PREFIX], capture_output=True, cwd=ROOT)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "status-page.png")
