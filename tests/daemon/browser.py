"""Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe).

A pipe, not a port: the browser runs inside a test's network namespace (`ip netns exec`), where
the page under test is on loopback, and the test process outside still talks to it.
Messages are JSON, NUL-terminated; commands for the page carry its sessionId (flat mode).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "") if p and os.path.exists(p)), "")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe"]


def _above_9(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Browser:
    def __init__(self, netns: str | None = None) -> None:
        self.profile = tempfile.mkdtemp(prefix="svcproxy-chromium-")
        to_browser_r, self._w = os.pipe()
        self._r, from_browser_w = os.pipe()
        # above 9, so that putting them on 3 and 4 cannot clobber one of them
        to_browser_r, from_browser_w = (_above_9(fd) for fd in (to_browser_r, from_browser_w))
        # the browser reads commands on fd 3 and writes answers on fd 4: the shell puts them there
        redirect = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        argv = [*(["ip", "netns", "exec", netns] if netns else []), "bash", "-c", redirect, CHROMIUM, *FLAGS,
                f"--user-data-dir={self.profile}", "about:blank"]
        self.proc = subprocess.Popen(argv, pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0
        self.session = ""

    def _send(self, method: str, params: dict | None = None, session: str = "") -> int:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        return self._id

    def _read(self) -> dict:
        while b"\0" not in self._buf:
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, page: bool = True) -> dict:
        want = self._send(method, params, self.session if page else "")
        while True:
            msg = self._read()
            if msg.get("id") == want:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def open(self, url: str, width: int = 1100, height: int = 900) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"}, page=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 page=False)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
        self.call("Page.navigate", {"url": url})

    def eval(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def until(self, expression: str, timeout: float = 15) -> Any:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            with contextlib.suppress(RuntimeError):
                value = self.eval(expression)
                if value:
                    return value
            time.sleep(0.1)
        raise AssertionError(f"not true within {timeout}s in the browser: {expression}")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", page=False)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for fd in (self._w, self._r):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)
