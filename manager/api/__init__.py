"""The daemon's HTTP API: Docker Engine API shapes on a unix socket (and optional TCP/TLS)."""
