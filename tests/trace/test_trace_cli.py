"""`svcproxy trace` on the command line: --rules or -f, text / json / svg / png."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from trace_helpers import DATA

from svcproxy.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "cluster"
RENDER = ["-f", str(EXAMPLES), "--hostname-override", "test-node", "--node-ip", "192.168.0.2",
          "--cluster-cidr", "10.0.0.0/16"]


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, ["trace", *args])
    return r.exit_code, r.stdout, r.stderr


def test_rules_file_json_contract() -> None:
    code, out, _ = run("--rules", str(DATA / "kube-proxy.iptables"), "--source", "10.0.0.2",
                       "--destination", "172.30.0.44", "--port", "80", "--output", "json")
    assert code == 0
    d = json.loads(out)
    assert d["verdict"] == "ACCEPT" and d["endpoints"] == ["10.180.0.4:80", "10.180.0.5:80"]
    assert d["masquerade"] is False
    assert sorted(o["probability"] for o in d["outcomes"]) == [0.5, 0.5]
    assert isinstance(d["path"], list) and d["path"][0] == "PREROUTING"


def test_local_address_makes_the_source_local() -> None:
    args = ["--rules", str(DATA / "kube-proxy.iptables"), "--source", "192.168.0.2", "--destination",
            "172.30.0.41", "--port", "80", "--output", "json"]
    d = json.loads(run(*args, "--local-address", "192.168.0.2")[1])
    assert d["path"][0] == "OUTPUT" and d["masquerade"] is True
    d = json.loads(run(*args)[1])
    assert d["path"][0] == "PREROUTING"


def test_render_from_manifests_both_modes() -> None:
    for mode in ("iptables", "nftables"):
        code, out, err = run(*RENDER, "--proxy-mode", mode, "--source", "192.168.0.2", "--destination",
                             "172.30.0.53", "--port", "53", "--protocol", "udp", "--output", "json")
        assert code == 0, err
        d = json.loads(out)
        assert d["endpoints"] == ["10.0.1.20:5353", "10.0.2.20:5353"]
        assert d["masquerade"] is True  # --node-ip counts as local: starts at OUTPUT, not pod traffic


def test_text_output() -> None:
    code, out, _ = run(*RENDER, "--proxy-mode", "nftables", "--source", "10.0.1.5", "--destination",
                       "172.30.0.30", "--port", "80")
    assert code == 0
    assert "starts at PREROUTING" in out and "Outcomes" in out
    assert "10.0.1.40:8080" in out and "10.0.2.40:8080" in out
    assert "session affinity" in out and "sticky" in out
    assert "numgen 0 of mod 2 (p=0.5)" in out


def test_svg_and_png(tmp_path: Path) -> None:
    svg = tmp_path / "t.svg"
    code, _, err = run(*RENDER, "--source", "10.0.1.5", "--destination", "172.30.0.10", "--port", "80",
                       "--output", "svg", "-o", str(svg))
    assert code == 0, err
    text = svg.read_text()
    assert text.startswith("<svg") and "PREROUTING" in text and "POSTROUTING" in text
    assert "DNAT to 10.0.1.10:8080" in text and "33.3%" in text
    png = tmp_path / "t.png"
    code, _, err = run(*RENDER, "--source", "10.0.1.5", "--destination", "172.30.0.10", "--port", "80",
                       "--output", "png", "-o", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_are_clear(tmp_path: Path) -> None:
    code, _, err = run("--source", "1.1.1.1", "--destination", "2.2.2.2", "--port", "80")
    assert code == 2 and "either --rules FILE or -f PATH" in err
    bad = tmp_path / "bad.rules"
    bad.write_text("*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m frob -j DROP\nCOMMIT\n")
    code, _, err = run("--rules", str(bad), "--source", "1.1.1.1", "--destination", "2.2.2.2", "--port", "80")
    assert code == 1 and f"cannot trace in {bad}: line 3: unknown match -m frob" in err
    code, _, err = run("--rules", str(tmp_path / "missing"), "--source", "1.1.1.1", "--destination", "2.2.2.2",
                       "--port", "80")
    assert code == 2 and "cannot read --rules" in err


def test_rules_from_stdin() -> None:
    text = (DATA / "kube-proxy.iptables").read_text()
    r = CliRunner().invoke(main, ["trace", "--rules", "-", "--source", "10.0.0.2", "--destination", "172.30.0.41",
                                  "--port", "80", "--output", "json"], input=text)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["endpoints"] == ["10.180.0.1:80"]
