"""The three console scripts answer --help from the installed environment."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = {
    "edgeward": "Operate an edgeward fleet",
    "edgeward-agent": "The edgeward node agent",
    "edgeward-central": "The edgeward central service",
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_help(script):
    path = Path(sys.executable).parent / script
    found = str(path) if path.exists() else shutil.which(script)
    assert found, f"{script} is not installed: pip install -e .[test]"
    result = subprocess.run([found, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert SCRIPTS[script] in result.stdout
    assert "Usage:" in result.stdout
