"""`python -m bench.reliability [--quick] [--only NAME]... [--mode MODE]...`: run the scenarios.

Full length by default (the figures in docs/reliability.md); --quick is the CI length that
tests/soak runs. Prints progress, then one JSON object per scenario run (--out writes them all
to a file too). Needs root: every scenario builds its own network namespaces and removes them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import MODES, SCENARIOS


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the short CI variant")
    ap.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only these scenarios")
    ap.add_argument("--mode", action="append", choices=MODES, help="only these proxy modes")
    ap.add_argument("--out", type=Path, help="write the results as a JSON list here")
    args = ap.parse_args()
    results = []
    t0 = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    for name in args.only or list(SCENARIOS):
        fn: Callable[..., dict]
        fn, per_mode = SCENARIOS[name]
        for mode in (args.mode or MODES) if per_mode else (None,):
            progress(f"{name}{f' ({mode})' if mode else ''} ...")
            res = fn(mode=mode, quick=args.quick, progress=progress) if mode else fn(quick=args.quick, progress=progress)
            for r in res if isinstance(res, list) else [res]:
                results.append(r)
                print(json.dumps(r), flush=True)
            if args.out:
                args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
