"""Health of a chroot "node" for the rollout test: `chroot_node_health.py ROOT`.

Stand-in for central's view of a node until central reports node health: a
node counts as connected when its installed edgeward-agent runs; its version
is what that program reports; it has no outbox (no agent daemon runs here).
Prints the JSON the rollout's --health command must print.
"""

import json
import subprocess
import sys

root = sys.argv[1]
done = subprocess.run(
    ["chroot", root, "edgeward-agent", "--version"],
    capture_output=True,
    text=True,
    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
)
runs = done.returncode == 0 and done.stdout.startswith("edgeward-agent, version ")
version = done.stdout.split()[-1] if runs else ""
print(json.dumps({"connected": runs, "version": version, "outbox": 0}))
