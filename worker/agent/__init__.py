"""The agent: a worker's session with the dispatcher and the runners of its tasks."""
