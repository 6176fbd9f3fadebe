"""Compile the BPF C sources (bpf/*.c) into the object libbpf loads.

Setup runs this once (`python -m svcproxy.dataplane.ebpf.build`), so the daemon needs no clang;
if it did not, the first use compiles. The object is named by a hash of its source and of the
compile command, so an edited source can never be served by a stale object."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("bpf") / "sock.c"
CACHE_ENV = "SVCPROXY_BPF_CACHE"
DEFAULT_CACHE = Path("/var/cache/svcproxy/bpf")
CFLAGS = ("-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu")


class BuildError(RuntimeError):
    """The BPF object cannot be built here (no clang, no libbpf headers, a compile error)."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def object_path(source: Path = SOURCE) -> Path:
    """Where the object of this exact source and these flags lives."""
    digest = hashlib.sha256(source.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    return cache_dir() / f"{source.stem}-{digest}.o"


def compile_command(source: Path, out: Path) -> list[str]:
    return ["clang", *CFLAGS, "-c", str(source), "-o", str(out)]


def build(source: Path = SOURCE) -> Path:
    """The compiled object's path, compiling it first if absent."""
    out = object_path(source)
    if out.exists():
        return out
    if shutil.which("clang") is None:
        raise BuildError("clang is missing (it compiles ebpf mode's BPF programs): run scripts/setup.sh "
                         "or `apt-get install clang libbpf-dev`; or use --proxy-mode nftables")
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        raise BuildError("libbpf's headers are missing: `apt-get install libbpf-dev`; "
                         "or use --proxy-mode nftables")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    done = subprocess.run(compile_command(source, tmp), capture_output=True, text=True)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"compiling {source} failed:\n{done.stderr.strip()}")
    tmp.replace(out)  # atomic: a concurrent loader sees the whole object or none
    return out


def main() -> None:
    """setup.sh's step: compile now, or say why not."""
    try:
        print(f"svcproxy setup: BPF object {build()}")
    except BuildError as e:
        sys.exit(f"svcproxy setup: {e}")


if __name__ == "__main__":
    main()
