"""QR codes of client configs: in the terminal, as PNG or SVG files.

segno: pure Python, no dependencies (PNG without Pillow), maintained, and the
QR encoder is standard-conformant (it picks the smallest version and mode); a
hand-rolled encoder would be a liability for something users scan with phones.
"""

from __future__ import annotations

import io
from pathlib import Path

import segno

FORMATS = ("png", "svg")


def make(text: str) -> segno.QRCode:
    # Error correction M: survives a slightly damaged screen photo; boost_error lets
    # segno raise it when the size allows.
    return segno.make(text, error="m", micro=False)


def terminal(text: str) -> str:
    """The QR code as text for a terminal (half-block characters, two rows a line)."""
    out = io.StringIO()
    make(text).terminal(out=out, compact=True, border=2)
    return out.getvalue()


def save(text: str, path: Path, scale: int = 6) -> Path:
    kind = path.suffix.lstrip(".").lower()
    if kind not in FORMATS:
        raise ValueError(f"QR file {path} must end in .png or .svg")
    make(text).save(str(path), kind=kind, scale=scale, border=4)
    return path
