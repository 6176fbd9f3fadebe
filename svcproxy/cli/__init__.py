"""The `svcproxy` command: render | trace | run | cleanup | lab.

Each subcommand lives in its own module and is imported only when used, so `svcproxy render`
does not pay for the daemon's or the lab's imports.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

COMMANDS = {
    "render": ("svcproxy.cli.render", "render"),
    "trace": ("svcproxy.cli.trace", "trace"),
    "run": ("svcproxy.cli.run", "run"),
    "cleanup": ("svcproxy.cli.cleanup", "cleanup"),
    "lab": ("svcproxy.cli.lab", "lab"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (module, _) in COMMANDS.items() if importlib.util.find_spec(module)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attr)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="svcproxy")
def main() -> None:
    """A Kubernetes Service proxy you can read, run and debug."""
