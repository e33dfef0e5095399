"""cli: the `shoal` command and the `shoal daemon` composition root."""
