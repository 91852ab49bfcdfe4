"""The checked-in generated code matches the .proto sources."""

from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_generator():
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(path: Path) -> dict[str, Path]:
    return {
        p.relative_to(path).as_posix(): p
        for p in path.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_is_fresh(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a test dependency")
    _load_generator().generate(tmp_path / "gen")
    fresh, checked_in = _tree(tmp_path / "gen"), _tree(ROOT / "proto" / "gen")
    assert sorted(fresh) == sorted(checked_in), "generated file set differs: run proto/generate.py"
    stale = [
        name for name in fresh if not filecmp.cmp(fresh[name], checked_in[name], shallow=False)
    ]
    assert not stale, f"stale generated code {stale}: run .venv/bin/python proto/generate.py"


def test_a_changed_proto_is_detected(tmp_path):
    """The check above can fail: a generator run on a changed schema differs."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a test dependency")
    generator = _load_generator()
    changed = tmp_path / "src"
    (changed / "edgeward" / "v1").mkdir(parents=True)
    # admin.proto imports node.proto's enums: both go into the changed tree.
    for name in ("admin.proto", "node.proto"):
        text = (ROOT / "proto" / "edgeward" / "v1" / name).read_text()
        (changed / "edgeward" / "v1" / name).write_text(text)
    with open(changed / "edgeward" / "v1" / "admin.proto", "a") as admin:
        admin.write("\nmessage FreshnessProbe { string extra = 1; }\n")
    generator.HERE = changed
    generator.PROTO_FILES = ["edgeward/v1/admin.proto", "edgeward/v1/node.proto"]
    generator.generate(tmp_path / "gen")
    fresh = (tmp_path / "gen" / "edgeward" / "v1" / "__init__.py").read_text()
    assert "extra" in fresh
    assert fresh != (ROOT / "proto" / "gen" / "edgeward" / "v1" / "__init__.py").read_text()
