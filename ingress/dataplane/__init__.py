"""The data plane of service VIPs and the routing mesh, on nftables (this kernel has no IPVS).

  spec.py       what is wanted: LbNetwork/TaskVips/VipService, Mesh/PublishedPort, TaskIngress (frozen)
  slots.py      a service's backend map as numgen slots, and the smallest change between two
  plan.py       pure: (layout held, wanted) → one nft transaction + the iproute2/conntrack steps
  readback.py   pure: `nft -j` / `ip -j` text → layouts (adoption after a daemon restart)
  kernel.py     nft, ip, conntrack inside a namespace (nsenter on a held fd), sysctls
  ctlist.py     pure: would a conntrack flush filter match a namespace's listed entries
  hostports.py  pure: host-mode published ports (one small table in the daemon's namespace)
  dataplane.py  IngressDataPlane: the asyncio face, one per daemon

Where the rules live (networking.md §4 lists Docker's choices):

- **VIPs: in each task's own namespace, with a per-node, per-network LB namespace behind**.
  A connection to a VIP is DNATed as it leaves the task (table `shoal-vip`, Docker puts its
  IPVS there too): the backend answers the task's own address, and no packet of the connection
  crosses another namespace. Measured by hand against the LB namespace alone (bench/README.md):
  keep-alive 0.93-1.04x of going straight against 0.76-0.82x, new connections +17-25%.
  The price is state per task (a table per sandbox, O(VIPs of its networks)) and a change to
  every sandbox of a network, applied to the sandboxes at once (node/balancing.py):
      map vips    ipv4_addr : verdict             VIP → goto v-<vip hex>
      chain out   nat output -100:   tcp flags & (syn | ack) == syn ip daddr vmap @vips
                                     meta l4proto { udp, sctp } ip daddr vmap @vips
      chain v-X   dnat ip to numgen inc mod N map @vb-X          (destination port unchanged)
      map vb-X    slot : backend, slots 0..N-1 in rotation, keys from 2^31 the draining ones
  TCP is DNATed from its SYN only: a connection opened before the table (through the LB
  namespace) is picked up mid-stream by the task's conntrack and goes on to the LB namespace
  untouched; so does a connection whose backend is gone for good once its entry is flushed,
  and the LB namespace sends it to a live backend, which resets it.
  The **LB namespace** (the caller gives it, with the node's endpoint address on the network
  as `LbNetwork.address`) holds the same VIPs and answers ARP and ICMP echo for them (/32
  aliases), and balances whatever reaches a VIP without a task table: containers attached by
  `docker run --network` before their first sync, connections older than the table. Table
  `shoal-lb`: the same maps and chains from `chain pre` (nat prerouting dstnat, `meta l4proto
  { tcp, udp, sctp } ip daddr vmap @vips`), and `chain post` (nat postrouting srcnat, `ct
  status dnat snat ip to <node's endpoint>`): there the backend sees the node's endpoint
  address (as with Docker's LB), and the SNAT brings the reply back through the namespace that
  holds the connection.

- **Routing mesh: the daemon's namespace → the ingress namespace → a task**, as Docker:
  - table `shoal-publish` in the daemon's namespace: in prerouting *and* output (so
    `localhost:P` works; route_localnet on the link), `fib daddr type local meta l4proto .
    th dport @ports dnat ip to <ingress namespace's address on the link>`, a masquerade of
    what the node itself sends that way, and a bound socket per port that reserves it;
  - table `shoal-mesh` in the ingress namespace: `fib daddr type local meta l4proto . th
    dport vmap @ports` → chain p-<proto>-<port> → `dnat ip to numgen inc mod N map
    @pb-<proto>-<port>` whose values are `task address . target port`: the published →
    target translation happens here, per backend (tasks of two revisions may listen on
    different ports during an update), instead of a REDIRECT inside every task.
  - table `shoal-task` in each task on ingress: only the published target ports may arrive
    on the ingress address (networking.md §4 point 3), and reply routing (below).

- **The client's address reaches the task** (issue 12 item 4), `ClientAddress.PRESERVE`: the
  ingress namespace only DNATs. The task tells which node's ingress namespace a connection
  came in by from the source MAC of its first packet (02:42 + that namespace's ingress
  address), stores it as the connection mark (`ct mark set ether saddr map @nodes`), and
  routes everything of that connection by it: `meta mark set ct mark` in prerouting and in a
  route-type output chain, `tcp_fwmark_accept` (the SYN-ACK and the accepted socket carry the
  mark), one `ip rule fwmark M lookup M` and `default via <that node's ingress address>` per
  node (M = the address as a number: the same everywhere, nothing to allocate). A UDP server
  answering from a wildcard socket takes its source address from the default route (the
  gateway interface) before any mark exists; the task therefore remembers the UDP flows that
  came in on ingress (a dynamic set, 3 min) and sets their replies' source back to its
  ingress address in the raw output hook, before conntrack. Tested through two nodes over TCP
  and UDP, from outside and from the node itself. `ClientAddress.SNAT` is Docker's behaviour
  (the ingress namespace SNATs to the node's ingress endpoint; no task state needed).
  SCTP goes the same way but is untested (this kernel has no SCTP).

Per-packet path: only a connection's first packet meets the nat chains, and it meets the same
rules whatever the number of services (a verdict-map lookup, the service chain's one dnat rule,
and in the LB namespace the snat), measured with `nft monitor trace` with 1,000 VIPs defined.
Every later packet is conntrack only.

Updates: one nft transaction per namespace, proportional to what changed: a service or port
is a map, a chain, one rule and one verdict element; a backend more or less is one or two map
elements (slots are kept; a hole is filled by a newcomer or by the last slot) and the one rule
when N changes. Drain: a backend moved to `draining` leaves the slots (no new connection) but
its conntrack entries keep NAT-ing its open connections; once it is in neither list, its
entries are deleted (`conntrack -D -d VIP -r backend`), so a client's next packet is DNATed
afresh and meets a reset, not a hang. The draining backends are recorded in the map itself
(keys ≥ 2^31, never drawn), so a restarted daemon that reads the map back still flushes them.
"""

from ingress.dataplane.dataplane import Applied, IngressDataPlane, Netns
from ingress.dataplane.hostports import HostPort
from ingress.dataplane.kernel import DataPlaneError
from ingress.dataplane.spec import (
    ClientAddress,
    IngressBackend,
    IngressNode,
    LbNetwork,
    Mesh,
    PublishedPort,
    TaskIngress,
    TaskVips,
    VipService,
)
from model.endpoint import endpoint_mac as mac_from_ip

__all__ = [
    "Applied",
    "ClientAddress",
    "DataPlaneError",
    "HostPort",
    "IngressBackend",
    "IngressDataPlane",
    "IngressNode",
    "LbNetwork",
    "Mesh",
    "Netns",
    "PublishedPort",
    "TaskIngress",
    "TaskVips",
    "VipService",
    "mac_from_ip",
]
