"""Regenerate the Python code for edgeward's .proto files.

Usage: python -m edgeward.proto.generate [OUT_DIR]

OUT_DIR defaults to proto/gen next to this file. The generated code is checked
in; tests/test_proto_fresh.py regenerates into a temporary directory and fails
when the checked-in copy differs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_FILES = sorted(p.relative_to(HERE).as_posix() for p in HERE.glob("edgeward/**/*.proto"))
DEFAULT_OUT = HERE / "gen"
PLUGIN_OPTIONS = "client_generation=async,server_generation=async"


def _plugin_path() -> str:
    name = "protoc-gen-python_betterproto2"
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: pip install 'betterproto2-compiler==0.10.1'")
    return found


def generate(out_dir: Path) -> None:
    """Write the generated package tree into out_dir (replacing what is there)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-python_betterproto2={_plugin_path()}",
        f"-I{HERE}",
        f"--python_betterproto2_out={out_dir}",
        f"--python_betterproto2_opt={PLUGIN_OPTIONS}",
        *PROTO_FILES,
    ]
    # the plugin formats its output with ruff; use the one beside this interpreter
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    done = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"protoc failed ({done.returncode}):\n{done.stderr}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
