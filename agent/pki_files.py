"""The node's certificate files: written so that a crash never leaves a broken pair.

A renewal (uplink) or an enrollment replaces the certificate and its key. Both
are written beside their targets first (fsynced), then the key and then the
certificate are renamed into place; `finish_pair_install`, run before every
connection, completes a replacement a crash interrupted between the renames.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write a file so that readers see the old or the new content, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install_pair(cert_file: Path, key_file: Path, cert_pem: bytes, key_pem: bytes) -> None:
    """Replace a certificate and its key. Both go to *.new first; then key,
    then cert are renamed; `finish_pair_install` completes a crash in between."""
    write_atomically(key_file.with_name(key_file.name + ".new"), key_pem, 0o600)
    write_atomically(cert_file.with_name(cert_file.name + ".new"), cert_pem, 0o644)
    finish_pair_install(cert_file, key_file)


def finish_pair_install(cert_file: Path, key_file: Path) -> None:
    new_cert = cert_file.with_name(cert_file.name + ".new")
    new_key = key_file.with_name(key_file.name + ".new")
    if not new_cert.exists():
        with contextlib.suppress(FileNotFoundError):
            new_key.unlink()  # a key without its cert: the renewal never finished
        return
    if new_key.exists():
        os.replace(new_key, key_file)
    os.replace(new_cert, cert_file)
