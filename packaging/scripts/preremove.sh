#!/bin/sh
# Before removal (deb: remove|upgrade|deconfigure|failed-upgrade; rpm: $1 = 0
# erase, 1 upgrade; on an rpm upgrade this runs after the new postinstall).
set -e
NAME=@NAME@

case "$1" in
remove | 0)
	if [ -d /run/systemd/system ]; then
		systemctl disable --now "$NAME.service" || true
	fi
	;;
esac
case "$1" in
remove | upgrade | 0)
	# the byte-code postinstall wrote (no package owns it)
	find "/usr/lib/$NAME" -name __pycache__ -type d -prune -exec rm -rf {} +
	;;
esac
