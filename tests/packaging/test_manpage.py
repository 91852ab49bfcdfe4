"""packaging/manpage.py: click command tree -> man page, checked with the real man(1)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import click
import pytest

from tests.packaging.system import REPO

spec = importlib.util.spec_from_file_location("manpage", REPO / "packaging" / "manpage.py")
assert spec and spec.loader
manpage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(manpage)


@click.group()
@click.option("--verbose", is_flag=True, help="Say more.")
def tool() -> None:
    """Do a thing to nodes.

    Longer text about the --dry-run mode.
    """


@tool.command()
@click.option("--node", required=True, help="The node-id to act on.")
def drain(node: str) -> None:
    """Drain one node."""


def test_page_has_sections_options_commands_and_escapes_hyphens():
    page = manpage.render(tool, "edge-tool", "1.2.3", "2026-01-02", {"/etc/x.toml": "config"})
    lines = page.splitlines()
    assert lines[0] == '.TH EDGE-TOOL 1 "2026-01-02" "edge-tool 1.2.3" "User Commands"'
    assert "edge\\-tool \\- Do a thing to nodes" in lines
    assert "Longer text about the \\-\\-dry\\-run mode." in lines
    assert "\\fB\\-\\-verbose\\fR" in lines and "Say more." in lines
    assert "\\fBedge\\-tool drain\\fR [OPTIONS]" in lines
    assert "\\fB\\-\\-node TEXT\\fR" in lines and "The node\\-id to act on.  [required]" in lines
    assert lines[-3:] == [".TP", "\\fI/etc/x.toml\\fR", "config"]


def test_text_starting_with_a_dot_is_not_a_roff_request():
    assert manpage.escape(".hidden\n'quoted") == "\\&.hidden\n\\&'quoted"


def test_real_man_renders_the_page(tmp_path: Path):
    if not shutil.which("man"):
        pytest.skip("man is not installed (Debian package man-db)")
    page = tmp_path / "edge-tool.1"
    page.write_text(manpage.render(tool, "edge-tool", "1.2.3", "2026-01-02", {}))
    done = subprocess.run(
        ["man", "-l", "-P", "cat", str(page)],
        text=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "MANWIDTH": "80", "LANG": "C"},
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = " ".join(done.stdout.split())
    assert "edge-tool - Do a thing to nodes" in text
    assert "edge-tool drain [OPTIONS]" in text and "--node TEXT The node-id to act on." in text
