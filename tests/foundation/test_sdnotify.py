"""sd_notify lines reach a real unix datagram socket, as systemd would read them."""

from __future__ import annotations

import os
import socket

from edgeward.sdnotify import Notifier, watchdog_interval


def _receiver(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    return sock, path


def test_ready_status_watchdog_stopping_lines(tmp_path):
    sock, path = _receiver(tmp_path)
    notifier = Notifier(path)
    try:
        notifier.ready("serving 3 users")
        notifier.watchdog()
        notifier.reloading()
        notifier.stopping()
        lines = [sock.recv(4096).decode() for _ in range(4)]
    finally:
        notifier.close()
        sock.close()
    assert lines[0] == "READY=1\nSTATUS=serving 3 users"
    assert lines[1] == "WATCHDOG=1"
    assert lines[2].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert int(lines[2].split("MONOTONIC_USEC=")[1]) > 0
    assert lines[3] == "STOPPING=1"


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready()  # must not raise


def test_vanished_socket_does_not_break_the_daemon(tmp_path):
    sock, path = _receiver(tmp_path)
    notifier = Notifier(path)
    sock.close()
    os.unlink(path)
    notifier.status("still serving")  # systemd went away: best effort, no exception
    notifier.close()


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None
