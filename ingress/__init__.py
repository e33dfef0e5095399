"""ingress: the routing mesh and service VIPs (nftables) and the embedded DNS."""
