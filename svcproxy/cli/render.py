"""`svcproxy render`: print the complete ruleset this node would get, deterministically."""

from __future__ import annotations

import sys
from dataclasses import replace

import click

from ..config import NodeConfig
from ..dataplane import renderer
from ..gcpause import gc_paused
from ..model.load import Objects, load_paths
from ..proxyconfig import Settings
from ..state import ProxyState, build_state
from . import skip_teardown
from .options import manifest_option, proxy_options


def report_errors(errors: list[str]) -> None:
    """Bad objects go to stderr, one line each; the rest is still rendered."""
    for e in errors:
        click.echo(f"error: {e}", err=True)
    if errors:
        click.echo(f"{len(errors)} object(s) skipped; everything else was rendered.", err=True)


def load_state(paths: tuple[str, ...], cfg: NodeConfig) -> tuple[ProxyState, NodeConfig]:
    """The desired state from -f PATH..., bad objects reported on stderr (shared with trace),
    and the node config completed from this node's Node object where the manifests hold one."""
    try:
        objects = load_paths(paths)
    except FileNotFoundError as e:
        raise click.UsageError(str(e)) from None
    cfg = node_from_manifests(objects, cfg)
    state = build_state(objects, cfg)
    report_errors(state.errors)
    return state, cfg


def node_from_manifests(objects: Objects, cfg: NodeConfig) -> NodeConfig:
    """The daemon's rule for a node it renders for: without --node-ip (or --bind-address), the
    node's IPs come from its Node object (and NodeCIDR mode's podCIDRs always do), here from
    the manifests. Warnings name what is still missing."""
    from ..runtime.nodeinfo import setup_warnings, with_node

    node = next((n for n in objects.nodes if n.name == cfg.hostname), None)
    cfg = with_node(cfg, node, node_ips_given=bool(cfg.node_ips))
    if node is not None and not cfg.node_pod_cidrs:  # whose pods are local (trace: ebpf's sockets)
        cfg = replace(cfg, node_pod_cidrs=node.pod_cidrs)
    for warning in setup_warnings(cfg):
        click.echo(f"warning: {warning}", err=True)
    return cfg


@click.command()
@manifest_option(required=True)
@proxy_options
def render(paths: tuple[str, ...], settings: Settings) -> None:
    """Print the ruleset (iptables-restore or nft -f input) for the objects in -f PATH.

    Takes kube-proxy's flags and --config file as `svcproxy run` does (the file's mode too)."""
    for note in settings.notes:
        click.echo(f"note: {note}", err=True)
    cfg = settings.node
    with gc_paused():  # bulk work whose objects live to the end: see gcpause.py
        state, cfg = load_state(paths, cfg)
        text = renderer(settings.mode)(state, cfg)
    sys.stdout.write(text)
    skip_teardown()
