"""Standalone containers on a node (`docker run`): containers without a task, made and driven
through the node-local Engine API on the worker's executor. See `containers` (the lifecycle),
`create` (the request → the container, pure), `attach` (the shim's stdio) and `api` (routes)."""
