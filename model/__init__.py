"""model: the object model shared by every side (plain data, no I/O)."""
