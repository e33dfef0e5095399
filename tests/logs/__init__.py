"""Service and task logs through the log broker."""
