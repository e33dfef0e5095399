"""worker: the agent, task controllers and the executor (images, OCI bundles, runc)."""
