"""Local networks of a node (bridge driver, scope local) for standalone containers: `networks`
(records, addresses, endpoints), `ipam` (pure), `api` (connect/disconnect, and the local half of
the /networks routes). The data path is overlay.local_bridge's, wired in by the daemon."""
