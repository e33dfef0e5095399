"""overlay: VXLAN overlay networks on a node (namespaces, bridges, FDB entries)."""
