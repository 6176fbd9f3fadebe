"""`svcproxy trace`: where does a packet go through a node's ruleset, and why?

The ruleset comes from --rules (iptables-save output, `nft list ruleset` text or `nft -j` JSON)
or is rendered from manifests (-f, with the render flags). Output: text (the path and the
outcomes), json (shared/design.md's contract), svg or png (a picture of the way).
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..config import NodeConfig, ip_family
from ..netfilter import TraceError, TraceResult, render_svg, render_text, trace_packet
from ..proxyconfig import Settings
from ..state import ProxyState
from .options import manifest_option, proxy_options

if TYPE_CHECKING:
    from ..dataplane.ebpf.inspect import SocketChoice


def _rules_from_manifests(paths: tuple[str, ...], mode: str, cfg: NodeConfig) -> tuple[str, ProxyState, NodeConfig]:
    """The rules rendered from -f, the state they came from, and the node config completed from
    this node's Node object."""
    from ..dataplane import renderer
    from .render import load_state

    state, cfg = load_state(paths, cfg)
    return renderer(mode)(state, cfg), state, cfg


def _socket_client(source: str, cfg: NodeConfig, local: list[str]) -> bool:
    """In ebpf mode the hooks see the sockets of this node: its own addresses and its pods'."""
    addr = ipaddress.ip_address(source)
    return (addr.is_loopback or source in local
            or any(addr in ipaddress.ip_network(c, strict=False) for c in cfg.node_pod_cidrs if ip_family(c) ==
                   addr.version))


def _socket_choice(state: ProxyState | None, cfg: NodeConfig, destination: str, port: int, protocol: str,
                   pins: str) -> SocketChoice | None:
    """ebpf mode's choice at connect(): from the manifests' state, else a running node's pins."""
    from ..dataplane.ebpf import inspect

    if state is not None:
        return inspect.choice_from_state(state, cfg, destination, port, protocol)
    return inspect.choice_from_pins(destination, port, protocol, Path(pins))


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
@click.option("--bpf-pins", default="/sys/fs/bpf/svcproxy", show_default=True, type=click.Path(file_okay=False),
              help="ebpf mode with --rules: where the running node pinned its BPF maps (the connect() step "
                   "is read from them).")
def trace(rules_file: str | None, paths: tuple[str, ...], settings: Settings, source: str, destination: str,
          port: int, protocol: str, output_format: str, output_file: str | None, table: str | None,
          in_interface: str | None, bpf_pins: str) -> None:
    """Walk a new connection SOURCE -> DESTINATION:PORT through a node's netfilter rules and show
    every outcome (endpoint, verdict, masquerade) with its probability and the path there."""
    if bool(rules_file) == bool(paths):
        raise click.UsageError("give either --rules FILE or -f PATH (manifests to render), not both or neither")
    for note in settings.notes:  # ignored flags, settings without effect: as render says them
        click.echo(f"note: {note}", err=True)
    cfg = settings.node
    local = [*cfg.node_ips, *cfg.local_addresses]
    state: ProxyState | None = None  # rendered from -f; None for --rules
    if rules_file:
        try:
            rules = sys.stdin.read() if rules_file == "-" else Path(rules_file).read_text()
        except OSError as e:
            raise click.UsageError(f"cannot read --rules {rules_file}: {e.strerror}") from None
    else:
        cfg = replace(cfg, ip_family=ip_family(destination))  # the rules of the packet's family
        rules, state, cfg = _rules_from_manifests(paths, settings.mode, cfg)
        local = list(cfg.local_ips)

    def through_rules(dst: str, dport: int) -> TraceResult:
        return trace_packet(rules, source, dst, dport, protocol.upper(), local, table=table,
                            in_interface=in_interface)

    try:
        choice = None
        if settings.mode == "ebpf" and _socket_client(source, cfg, local):
            choice = _socket_choice(state, cfg, destination, port, protocol.upper(), bpf_pins)
        if choice is not None:
            from ..netfilter.socket_step import socket_trace

            result = socket_trace(choice, source, destination, port, protocol, through_rules)
        else:
            result = through_rules(destination, port)
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
