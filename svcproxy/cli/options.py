"""Flags shared by render, trace, run and lab: the node's view of itself, as kube-proxy names them."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import click

from ..config import NodeConfig, ip_family
from ..dataplane import MODES


def _cidr(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for v in values:
        for item in v.split(","):
            item = item.strip()
            if not item:
                continue
            if param.name == "nodeport_addresses" and item == "primary":
                out.append(item)
                continue
            try:
                out.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise click.BadParameter(f"{item!r} is not a CIDR (e.g. 10.0.0.0/8)") from None
    return tuple(out)


def _ips(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for v in values:
        for item in v.split(","):
            if not item.strip():
                continue
            try:
                out.append(str(ipaddress.ip_address(item.strip())))
            except ValueError:
                raise click.BadParameter(f"{item!r} is not an IP address") from None
    return tuple(out)


def manifest_option(required: bool = False) -> Callable:
    return click.option("-f", "--filename", "paths", multiple=True, required=required,
                        type=click.Path(), help="Manifest file or directory (YAML/JSON); repeatable.")


def node_options(func: Callable | None = None, *, modes: tuple[str, ...] = MODES) -> Callable:
    """Decorate a command with the flags that make a NodeConfig (see node_config).

    modes: the --proxy-mode choices (`run` adds userspace, which renders nothing)."""
    if func is None:
        return lambda f: node_options(f, modes=modes)
    opts = [
        click.option("--proxy-mode", type=click.Choice(modes), default="iptables", show_default=True,
                     help="Which dataplane to use."),
        click.option("--ip-family", type=click.Choice(["IPv4", "IPv6"]), default=None,
                     help="Family to proxy (default: that of the first --node-ip, else IPv4)."),
        click.option("--hostname-override", default=None,
                     help="This node's name, as in EndpointSlice nodeName (default: the hostname)."),
        click.option("--cluster-cidr", multiple=True, callback=_cidr,
                     help="Pod CIDR(s): traffic from here counts as pod traffic. Repeatable."),
        click.option("--node-ip", multiple=True, callback=_ips, help="The node's primary address, one per family."),
        click.option("--local-address", multiple=True, callback=_ips,
                     help="Another address on this node's interfaces. Repeatable."),
        click.option("--nodeport-addresses", multiple=True, callback=_cidr,
                     help="CIDRs (or 'primary') NodePorts answer on; default: every local address."),
        click.option("--masquerade-all", is_flag=True, default=False, help="SNAT all service traffic."),
        click.option("--iptables-localhost-nodeports", type=click.BOOL, default=True, show_default=True,
                     help="Whether NodePorts answer on 127.0.0.1 (IPv4 only)."),
        click.option("--iptables-masquerade-bit", "masquerade_bit", type=click.IntRange(0, 31), default=14,
                     show_default=True, help="The fwmark bit that marks packets for SNAT."),
        click.option("--nftables-layout", type=click.Choice(["kube-proxy", "maps"]), default="kube-proxy",
                     show_default=True,
                     help="nftables table layout: kube-proxy's, or 'maps' (endpoint changes are "
                          "map elements only: cheap at 10,000 Services)."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="A KubeProxyConfiguration file; flags given on the command line win."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def node_config(params: dict[str, Any]) -> NodeConfig:
    """Build the NodeConfig from node_options' values (and --config, where given)."""
    from .config_file import apply_config_file  # KubeProxyConfiguration support

    params = dict(params)
    if params.get("config_file"):
        params = apply_config_file(params["config_file"], params, click.get_current_context())
    family = params.get("ip_family")
    node_ips = params.get("node_ip") or ()
    fam = int(family[-1]) if family else (ip_family(node_ips[0]) if node_ips else 4)
    hostname = params.get("hostname_override") or socket.gethostname().lower()
    return NodeConfig(
        hostname=hostname, ip_family=fam, cluster_cidrs=tuple(params.get("cluster_cidr") or ()),
        node_ips=tuple(node_ips), local_addresses=tuple(params.get("local_address") or ()),
        nodeport_addresses=tuple(params.get("nodeport_addresses") or ()),
        masquerade_all=bool(params.get("masquerade_all")),
        localhost_nodeports=bool(params.get("iptables_localhost_nodeports", True)),
        masquerade_bit=int(params.get("masquerade_bit", 14)),
        nftables_layout=params.get("nftables_layout") or "kube-proxy",
    )
