"""The `edgeward` CLI's command groups, one module per noun."""
