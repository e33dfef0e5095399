"""Node-to-node RPC on the cluster port: msgpack frames over mutual TLS.

One TLS listener (port 2377) carries every kind of cluster traffic. A connection opens with a
hello frame naming its channel: `rpc` (requests, responses and server streams, multiplexed by
id) or a registered raw channel such as `raft`, which is handed the stream as is.
"""
