"""A local fleet on one machine: central plus nodes in network namespaces.

Used by `scripts/fleet` and `scripts/quickstart` (an operator's first look) and
by tests/fleet, tests/chaos and the burst test (the whole system on real
parts). `layout` is pure (names, addresses, configuration files); `netns`,
`procs`, `parts` and `fleet` are the thin drivers that make it real.
"""
