"""raft: a Raft consensus library. It imports nothing else of shoal."""
