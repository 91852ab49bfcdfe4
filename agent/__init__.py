"""The edgeward node agent: a trio daemon that applies users to the proxy core
and WireGuard, journals traffic deltas and streams them to central."""
