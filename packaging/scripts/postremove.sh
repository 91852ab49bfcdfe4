#!/bin/sh
# After removal (deb: remove|purge|upgrade|...; rpm: $1 = 0 erase, 1 upgrade).
set -e
NAME=@NAME@

# deb purge: the state goes too (dpkg itself deletes the config files).
# rpm has no purge: its state and edited config (.rpmsave) stay.
if [ "$1" = purge ]; then
	rm -rf "/var/lib/$NAME"
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
