#!/bin/sh
# After install and upgrade (deb: configure|abort-*; rpm: $1 = 1 install, 2 upgrade).
set -e
NAME=@NAME@

systemd-sysusers "/usr/lib/sysusers.d/$NAME.conf"

# Byte-compile the private library once, as dh_python does for Debian's own
# modules; preremove deletes it. A failure only costs start-up time.
python3.11 -m compileall -q -j 0 "/usr/lib/$NAME" >/dev/null ||
	echo "$NAME: byte-compiling /usr/lib/$NAME failed; it runs uncompiled" >&2

# Not enabled on install: the node needs its config first. On upgrade a
# running service restarts into the new version.
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload
	systemctl try-restart "$NAME.service"
fi
