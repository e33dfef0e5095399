"""The swarm's certificate authority, node certificates and join tokens."""
