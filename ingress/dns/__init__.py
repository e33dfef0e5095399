"""The embedded DNS: every task's resolver at 127.0.0.11 (networking.md §5, issue 11 item 3).

  records.py    what a node knows per network (services, tasks, their names); immutable
  resolver.py   the pure decision: query bytes → Answer | Forward | Drop
  resolvconf.py a task's /etc/resolv.conf; the upstreams from the host's
  forwarder.py  raw relaying of the rest to the upstreams, bounded
  netns.py      doing one thing inside another network namespace from a throwaway thread
  nat.py        the nftables rules that make the random ports 127.0.0.11:53
  server.py     DnsServer: one per sandbox, served by the daemon's loop
"""

from ingress.dns.forwarder import Forwarder, ForwardLimit
from ingress.dns.records import NetworkEntry, ServiceEntry, ServiceRecords, TaskEntry
from ingress.dns.resolvconf import Upstream, resolv_conf, upstreams
from ingress.dns.resolver import LOCAL_TTL, Answer, Drop, Forward, Reply, answer
from ingress.dns.server import DnsServer

__all__ = [
    "LOCAL_TTL",
    "Answer",
    "DnsServer",
    "Drop",
    "Forward",
    "ForwardLimit",
    "Forwarder",
    "NetworkEntry",
    "Reply",
    "ServiceEntry",
    "ServiceRecords",
    "TaskEntry",
    "Upstream",
    "answer",
    "resolv_conf",
    "upstreams",
]
