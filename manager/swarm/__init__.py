"""A node's membership in a swarm: local state, init/join/leave, and the manager runtime."""
