"""`svcproxy lab`: a cluster in network namespaces on this machine; up, curl, apply, status, down, demo."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from ..config import format_endpoint
from ..dataplane import MODES, RUN_MODES
from ..lab import DEFAULT_PREFIX, Lab, LabError
from ..lab.targets import VIAS

console = Console()


def _errors(func: Callable) -> Callable:
    """A LabError is the user's next step, not a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LabError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


def prefix_option(default: str = DEFAULT_PREFIX) -> Callable:
    return click.option("--prefix", default=default, show_default=True,
                        help="Starts every namespace/interface name of this lab (1-6 characters).")


def _progress(status: Any) -> Callable[[str], None]:
    def report(msg: str) -> None:
        if msg.startswith("warning:"):
            console.print(f"[yellow]{msg}[/yellow]")
        else:
            status.update(msg)
            console.print(f"[dim]· {msg}[/dim]")

    return report


@click.group()
def lab() -> None:
    """A Kubernetes-like cluster in network namespaces, with svcproxy on every node."""


@lab.command()
@click.option("-f", "--filename", "paths", multiple=True, required=True, type=click.Path(),
              help="Manifests (Services, EndpointSlices, Nodes); files or directories. Repeatable.")
@click.option("--nodes", type=int, default=None, help="Node count (default: the Nodes in the manifests, at least 2).")
@click.option("--proxy-mode", type=click.Choice(RUN_MODES), default="iptables", show_default=True)
@click.option("--nftables-layout", type=click.Choice(["kube-proxy", "maps"]), default="kube-proxy",
              show_default=True, help="The nodes' nftables table layout (with --proxy-mode nftables).")
@click.option("--dual-stack", is_flag=True, default=False,
              help="IPv4 and IPv6 on every node, pod and the outside client (also chosen when the "
                   "manifests hold IPv6 EndpointSlices or ClusterIPs); one svcproxy run per node serves both.")
@prefix_option()
@_errors
def up(paths: tuple[str, ...], nodes: int | None, proxy_mode: str, nftables_layout: str, dual_stack: bool,
       prefix: str) -> None:
    """Build the lab: nodes, pods for every endpoint, svcproxy run on every node."""
    with console.status("building the lab") as status:
        lab_ = Lab.up(paths, nodes=nodes, mode=proxy_mode, prefix=prefix, progress=_progress(status),
                      nftables_layout=nftables_layout, dual_stack=dual_stack)
    _print_status(lab_.status())
    console.print(f"\nTry: svcproxy lab curl {_first_service(lab_)} --prefix {prefix}    "
                  f"(and `svcproxy lab down --prefix {prefix}` when done)")


def _first_service(lab_: Lab) -> str:
    services = lab_.services()
    return services[0].name if services else "SERVICE"


@lab.command()
@prefix_option()
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--page", "page_node", default=None, metavar="NODE",
              help="Serve NODE's status page (what its proxy programmed, traffic per endpoint, a trace form) "
                   "on 127.0.0.1 here until Ctrl-C.")
@click.option("--port", "page_port", type=int, default=0, help="Local port for --page (default: any free one).")
@_errors
def status(prefix: str, output: str, page_node: str | None, page_port: int) -> None:
    """What the lab has and whether its processes run; --page NODE opens a node's status page."""
    lab_ = Lab(prefix)
    if page_node:
        _serve_page(lab_, page_node, page_port)
        return
    st = lab_.status()
    if output == "json":
        click.echo(json.dumps(st, indent=2))
    else:
        _print_status(st)


def _serve_page(lab_: Lab, node: str, port: int) -> None:
    import time

    from ..lab.status_page import PageForward

    ns = lab_.node_ns(node)  # a LabError names the nodes there are
    forward = PageForward(ns, port).start()
    console.print(f"status page of {node}: [bold]{forward.url}[/bold]  (forwarded into namespace {ns}; Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        forward.close()


def _print_status(st: dict) -> None:
    from rich.table import Table

    if not st.get("up"):
        left = st.get("namespaces") or []
        console.print(f"lab {st['prefix']!r} is not up" + (f"; leftover namespaces: {', '.join(left)} "
                                                            f"(svcproxy lab down --prefix {st['prefix']})"
                                                            if left else ""))
        return
    console.print(f"lab [bold]{st['prefix']}[/bold]: proxy mode {st['mode']}, programmed by {st['programmer']}, "
                  f"manifests in {st['manifests']}; outside reaches LB/external IPs via {st['external_via']}")
    t = Table("node", "address", "pod CIDR", "namespace", "svcproxy run")
    for n in st["nodes"]:
        proxy = n["proxy"] or {}
        t.add_row(n["name"], n["ip"], n["pod_cidr"], n["namespace"] + ("" if n["exists"] else " (missing!)"),
                  f"pid {proxy.get('pid')} " + ("running" if proxy.get("alive") else "[red]not running[/red]"))
    console.print(t)
    t = Table("pod", "IP", "node", "ports", "server")
    for p in st["pods"]:
        server = p["server"] or {}
        ports = " ".join([f"{x}/tcp" for x in p["tcp"]] + [f"{x}/udp" for x in p["udp"]])
        t.add_row(p["name"], p["ip"], p["node"], ports,
                  f"pid {server.get('pid')} " + ("running" if server.get("alive") else "[red]not running[/red]"))
    console.print(t)


@lab.command()
@prefix_option()
@_errors
def down(prefix: str) -> None:
    """Remove the lab: processes, namespaces and its state (also after a crash)."""
    removed = Lab(prefix).down()
    console.print(f"lab {prefix!r}: removed {len(removed)} namespace(s)" if removed else
                  f"lab {prefix!r}: nothing to remove")


@lab.command()
@click.argument("service")
@click.option("--from", "where", default=None,
              help="A pod (name or IP), a node (name or IP) or 'outside' (default: the first pod).")
@click.option("-n", "--count", type=click.IntRange(1, 10000), default=20, show_default=True)
@click.option("--udp", is_flag=True, help="Send UDP datagrams to a UDP port.")
@click.option("--via", type=click.Choice(VIAS), default=None,
              help="Which address (default: ClusterIP; from outside the LB IP, externalIP or NodePort).")
@click.option("--node", default=None, help="With --via nodeport: which node's NodePort (default: the first).")
@click.option("--timeout", type=float, default=None,
              help="Seconds to wait per attempt (default 1; 2 with -6: Linux reports an IPv6 refusal of a "
                   "TCP SYN only at the SYN's retry, after 1 s).")
@click.option("-6", "--ipv6", is_flag=True, default=False,
              help="Use the Service's IPv6 address (and the node's) in a dual-stack lab.")
@prefix_option()
@_errors
def curl(service: str, where: str | None, count: int, udp: bool, via: str | None, node: str | None,
         timeout: float | None, ipv6: bool, prefix: str) -> None:
    """Connect to SERVICE[:PORT] COUNT times; show which pods served and the source they saw."""
    from ..lab import report

    lab_ = Lab(prefix)
    where = where or lab_.pods[0].name
    family = 6 if ipv6 else 4
    timeout = timeout if timeout is not None else (2.0 if ipv6 else 1.0)
    target = lab_.target(service, where, udp=udp, via=via, node=node, family=family)
    _, client_ip = lab_.namespace_of(where, family)
    probes = lab_.probe(where, target.ip, target.port, udp=udp, count=count, timeout=timeout)
    title = escape(f"{target.service} via {target.kind} {format_endpoint(target.ip, target.port)}/{target.protocol} "
             f"from {where} ({client_ip})")
    report.show(console, title, probes, client_ip)


@lab.command()
@click.option("-f", "--filename", "paths", multiple=True, required=True, type=click.Path(),
              help="The lab's manifests from now on (the whole set: what is left out is deleted).")
@prefix_option()
@_errors
def apply(paths: tuple[str, ...], prefix: str) -> None:
    """Change a running lab's manifests (scale, add, delete); pods and proxies follow."""
    with console.status("applying") as status:
        res = Lab(prefix, progress=_progress(status)).apply(paths)
    for w in res.warnings:
        console.print(f"[yellow]warning: {w}[/yellow]")
    console.print(f"pods added: {', '.join(res.added) or 'none'}; removed: {', '.join(res.removed) or 'none'}; "
                  f"every proxy followed in {res.follow_seconds * 1000:.0f} ms")


@lab.command()
@click.option("--proxy-mode", type=click.Choice(MODES), default="iptables", show_default=True)
@prefix_option("demo")
@_errors
def demo(proxy_mode: str, prefix: str) -> None:
    """A tour: build a two-node lab from examples/cluster, show what a Service does, remove it."""
    from ..lab.demo import run_demo

    run_demo(console, proxy_mode, prefix)
