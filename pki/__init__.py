"""edgeward's internal certificate authority (a pure library; the CLI is thin)."""
