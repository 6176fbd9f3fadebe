"""`svcproxy trace`: where does a packet go through a node's ruleset, and why?

The ruleset comes from --rules (iptables-save output, `nft list ruleset` text or `nft -j` JSON)
or is rendered from manifests (-f, with the render flags). Output: text (the path and the
outcomes), json (shared/design.md's contract), svg or png (a picture of the way).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click

from ..config import NodeConfig, ip_family
from ..netfilter import TraceError, render_svg, render_text, trace_packet
from ..proxyconfig import Settings
from .options import manifest_option, proxy_options


def _rules_from_manifests(paths: tuple[str, ...], mode: str, cfg: NodeConfig) -> tuple[str, list[str]]:
    from ..dataplane import renderer
    from .render import load_state

    state, cfg = load_state(paths, cfg)
    return renderer(mode)(state, cfg), list(cfg.local_ips)


def _to_png(svg: str) -> bytes:
    try:
        import cairosvg
    except (OSError, ImportError) as e:  # cairocffi could not load libcairo
        raise click.ClickException(f"PNG output needs the system cairo library ({e}): "
                                   "apt-get install libcairo2, or use --output svg") from None
    return cairosvg.svg2png(bytestring=svg.encode())


@click.command()
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False, allow_dash=True),
              help="A ruleset: iptables-save output, `nft list ruleset` text or `nft -j list ruleset` JSON ('-' = stdin).")
@click.option("--table", type=click.Choice(["nat", "filter", "mangle", "raw", "security"]), default=None,
              help="The table of --rules given as bare iptables rules without '*nat'/'*filter' lines "
                   "(default: told from the chain names).")
@manifest_option()
@proxy_options
@click.option("--source", required=True, help="The packet's source address.")
@click.option("--destination", required=True, help="The packet's destination address.")
@click.option("--port", type=click.IntRange(1, 65535), required=True, help="The destination port.")
@click.option("--protocol", type=click.Choice(["TCP", "UDP", "SCTP"], case_sensitive=False), default="TCP",
              show_default=True)
@click.option("--in-interface", default=None, metavar="NAME",
              help="The interface the packet arrives on (for -i / iifname matches: the interface "
                   "detect-local modes); unknown if not given.")
@click.option("--output", "output_format", type=click.Choice(["text", "json", "svg", "png"]), default="text",
              show_default=True, help="What to print.")
@click.option("-o", "--output-file", type=click.Path(dir_okay=False), default=None,
              help="Write the output here instead of stdout.")
def trace(rules_file: str | None, paths: tuple[str, ...], settings: Settings, source: str, destination: str,
          port: int, protocol: str, output_format: str, output_file: str | None, table: str | None,
          in_interface: str | None) -> None:
    """Walk a new connection SOURCE -> DESTINATION:PORT through a node's netfilter rules and show
    every outcome (endpoint, verdict, masquerade) with its probability and the path there."""
    if bool(rules_file) == bool(paths):
        raise click.UsageError("give either --rules FILE or -f PATH (manifests to render), not both or neither")
    cfg = settings.node
    local = [*cfg.node_ips, *cfg.local_addresses]
    if rules_file:
        try:
            rules = sys.stdin.read() if rules_file == "-" else Path(rules_file).read_text()
        except OSError as e:
            raise click.UsageError(f"cannot read --rules {rules_file}: {e.strerror}") from None
    else:
        cfg = replace(cfg, ip_family=ip_family(destination))  # the rules of the packet's family
        rules, local = _rules_from_manifests(paths, settings.mode, cfg)
    try:
        result = trace_packet(rules, source, destination, port, protocol.upper(), local, table=table,
                               in_interface=in_interface)
    except TraceError as e:
        where = f" in {rules_file}" if rules_file and rules_file != "-" else ""
        raise click.ClickException(f"cannot trace{where}: {e}") from None

    to_tty = output_file is None and sys.stdout.isatty()
    data: str | bytes
    if output_format == "json":
        data = result.to_json() + "\n"
    elif output_format == "svg":
        data = render_svg(result)
    elif output_format == "png":
        if to_tty:
            raise click.UsageError("PNG is binary: write it to a file with -o trace.png")
        data = _to_png(render_svg(result))
    else:
        data = render_text(result, color=to_tty)
    if output_file:
        Path(output_file).write_bytes(data if isinstance(data, bytes) else data.encode())
        click.echo(f"wrote {output_file}", err=True)
    elif isinstance(data, bytes):
        sys.stdout.buffer.write(data)
    else:
        sys.stdout.write(data)
