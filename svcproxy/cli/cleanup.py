"""`svcproxy cleanup`: remove everything svcproxy programmed, and nothing else."""

from __future__ import annotations

import click

from ..config import NodeConfig
from ..dataplane import RUN_MODES, ApplyError, dataplane


@click.command()
@click.option("--proxy-mode", type=click.Choice(RUN_MODES), default=None,
              help="Clean up only this mode's rules (default: every mode).")
def cleanup(proxy_mode: str | None) -> None:
    """Remove svcproxy's chains, jumps and tables (both IP families), and userspace mode's
    svcproxy0 interface; foreign rules stay."""
    failed = False
    for mode in [proxy_mode] if proxy_mode else list(RUN_MODES):
        dp = dataplane(mode, NodeConfig())
        try:
            dp.cleanup()
        except ApplyError as e:
            click.echo(f"error: {mode} mode: {e}", err=True)
            failed = True
            continue
        click.echo(f"{mode}: removed svcproxy's " + ("interface svcproxy0" if mode == "userspace" else "rules"))
    if failed:
        raise SystemExit(1)
