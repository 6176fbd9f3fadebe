"""Logging as kube-proxy's klog does it: -v N shows the messages of level N and below (V(0)
is INFO), and --logging-format json writes one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
import time


def vlevel(v: int) -> int:
    """The logging level of klog's V(v): INFO for V(0), one step below INFO per level, and
    DEBUG from V(4) on (kube-proxy logs each sync at V(2) and detail at V(4) and up)."""
    return logging.DEBUG if v >= 4 else logging.INFO - v


class _JsonFormatter(logging.Formatter):
    """klog's JSON shape: ts (seconds), v (verbosity), msg; errors carry "err"."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 6), "caller": f"{record.name}:{record.lineno}",
               "msg": record.getMessage()}
        if record.levelno >= logging.ERROR:
            out["err"] = out["msg"]
        else:
            out["v"] = max(0, logging.INFO - record.levelno)
        return json.dumps(out)


def setup_logging(verbosity: int, fmt: str = "text") -> None:
    for v in range(1, 4):
        logging.addLevelName(vlevel(v), f"V{v}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(vlevel(verbosity))
    # watchfiles logs "N changes detected" at INFO on every wake-up: noise, and a log file
    # beside a watched manifest would feed it
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
