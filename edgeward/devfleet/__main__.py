import signal

from .cli import _interrupted, main

signal.signal(signal.SIGTERM, _interrupted)
main(prog_name="scripts/fleet")
