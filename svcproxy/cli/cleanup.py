"""`svcproxy cleanup` (and `run --cleanup`, kube-proxy's flag): remove everything svcproxy
programmed, and nothing else."""

from __future__ import annotations

from collections.abc import Callable

import click

from ..config import NodeConfig
from ..dataplane import RUN_MODES, ApplyError, dataplane


def _interface_exists(name: str) -> bool:
    import os

    return os.path.exists(f"/sys/class/net/{name}")


def cleanup_everything(modes: tuple[str, ...] = RUN_MODES, echo: Callable[[str], None] = click.echo) -> bool:
    """Run every given mode's cleanup; False if one failed (each failure is reported)."""
    ok = True
    for mode in modes:
        had_interface = mode == "userspace" and _interface_exists("svcproxy0")
        try:
            dataplane(mode, NodeConfig()).cleanup()
        except ApplyError as e:
            click.echo(f"error: {mode} mode: {e}", err=True)
            ok = False
            continue
        if mode == "userspace":
            echo("userspace: removed interface svcproxy0" if had_interface else "userspace: no svcproxy0 interface")
        elif mode == "ebpf":
            echo("ebpf: detached svcproxy's BPF programs and removed its pins (other tools' programs stay)")
        else:
            echo(f"{mode}: removed svcproxy's rules (both families; foreign rules stay)")
    return ok


@click.command()
@click.option("--proxy-mode", type=click.Choice(RUN_MODES), default=None,
              help="Clean up only this mode's rules (default: every mode).")
def cleanup(proxy_mode: str | None) -> None:
    """Remove svcproxy's chains, jumps and tables (both IP families), and userspace mode's
    svcproxy0 interface; foreign rules stay."""
    if not cleanup_everything((proxy_mode,) if proxy_mode else RUN_MODES):
        raise SystemExit(1)
