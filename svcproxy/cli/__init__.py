"""The `svcproxy` command: render | trace | run | cleanup | lab.

Each subcommand lives in its own module and is imported only when used, so `svcproxy render`
does not pay for the daemon's or the lab's imports.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys

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


# Set by a one-shot command (render, trace) once its output is written: the heap it leaves
# (a 10k-Service state is ~2M objects) need not be freed object by object on the way out.
FAST_EXIT = False


def skip_teardown() -> None:
    """Called by a one-shot command whose work is done: see entry()."""
    global FAST_EXIT
    FAST_EXIT = True


def entry() -> None:
    """The console script (also installed as `kube-proxy`, which means `svcproxy run`): main(), then for one-shot commands an exit without the interpreter's
    teardown (0.2-0.3 s at 10k Services). Output is flushed and logging shut down first."""
    if os.path.basename(sys.argv[0]) == "kube-proxy":  # the image's drop-in name: kube-proxy's CLI
        sys.argv[1:1] = ["run"]
    try:
        main()
    except SystemExit as e:
        if not FAST_EXIT:
            raise
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
