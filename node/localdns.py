"""The embedded DNS of standalone containers on user-defined local networks, as dockerd gives it
(worker.localnet's `ContainerDns`, made of ingress.dns's server; wired by the daemon).

Theory of operation: a container connected to a user-defined bridge network (not the default
`bridge`, which keeps the host's resolv.conf) gets ingress.dns's `DnsServer` in its namespace
at 127.0.0.11, and a resolv.conf naming it. The server answers from a `ServiceRecords` table
built for that container out of the network records (worker.localnet.networks): per network it
is on, every endpoint there is a name entry (container name, short ID, its network aliases)
under one nameless service, so only the task tier of the table is used; the container's own
legacy links on that network (`EndpointConfig.Links`, "target:alias") add `alias` to the
target's entry in its table only, as links are private to the container that declares them.
Other names are forwarded to the host's resolvers (the server's forwarder).

Tables are rebuilt for every served container after any change of the records (`refresh`), so
a link to a container that joins later resolves once it joins. A server is started by the first
connect to a user-defined network and lives until the container is released (its namespace goes
with it) or the daemon stops (`close`); a restarted daemon starts them again (`restore`) for
the namespaces that are still there. A container attached to a swarm overlay has the overlay's
server in its namespace (node/attachments.py): it gets none of these (one 127.0.0.11 per
namespace).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aio import cancel_and_wait
from ingress.dns import DnsServer, ForwardLimit, NetworkEntry, ServiceEntry, ServiceRecords, TaskEntry, resolv_conf
from ingress.dns.nat import NatError
from ingress.dns.records import parse_address

log = logging.getLogger("shoal.localdns")


def link_aliases(links: Iterable[str]) -> dict[str, list[str]]:
    """Legacy links ("target:alias", or "target" alone) as target name → its aliases."""
    out: dict[str, list[str]] = {}
    for link in links:
        target, _, alias = link.partition(":")
        target = target.lstrip("/")
        out.setdefault(target, []).append(alias or target)
    return out


def container_table(records: Iterable[dict[str, Any]], cid: str) -> tuple[ServiceRecords, list[str], bool]:
    """What container `cid` resolves: the table, the IDs of its networks in resolution order, and
    whether any of them is not internal (forwarding may leave through the host's loopback)."""
    entries, order, external = [], [], False
    for record in records:
        if cid not in record["Containers"] or record.get("_default"):
            continue
        links = link_aliases(record.get("_links", {}).get(cid, []))
        tasks = []
        for other, endpoint in sorted(record["Containers"].items()):
            aliases = (*record.get("_aliases", {}).get(other, []), *links.get(endpoint["Name"], []))
            for key in ("IPv4Address", "IPv6Address"):
                if endpoint.get(key):
                    tasks.append(TaskEntry(endpoint["Name"], other, other, parse_address(endpoint[key]),
                                           aliases=tuple(aliases)))
        entries.append(NetworkEntry(record["Id"], record["Name"], (ServiceEntry("", "", tasks=tuple(tasks)),)))
        order.append(record["Id"])
        external = external or not record["Internal"]
    return ServiceRecords.of(entries), order, external


class LocalDns:
    """The embedded DNS servers of one node's standalone containers, by container ID."""

    def __init__(self, namespace: Callable[[str], Path], resolv_conf_path: str = "/etc/resolv.conf") -> None:
        self._namespace = namespace
        self._resolv_conf_path = resolv_conf_path
        self._servers: dict[str, DnsServer] = {}
        self._limit = ForwardLimit()          # one bound on forwarded queries for all of them

    def __contains__(self, cid: str) -> bool:
        return cid in self._servers

    def resolv_conf(self) -> str:
        """The resolv.conf of a container it serves: the host's, its nameservers 127.0.0.11."""
        try:
            host = Path(self._resolv_conf_path).read_text()
        except OSError:
            host = ""
        return resolv_conf(host)

    async def ensure(self, cid: str, records: list[dict[str, Any]]) -> bool:
        """Serve `cid` (its namespace exists); True if its server was started now."""
        if cid in self._servers:
            return False
        table, order, external = container_table(records, cid)
        server = DnsServer(str(self._namespace(cid)), table, order, resolv_conf_path=self._resolv_conf_path,
                           external_access=external, limit=self._limit)
        await server.start()
        self._servers[cid] = server
        return True

    def refresh(self, records: list[dict[str, Any]]) -> None:
        """Every server's table and networks from the records as they are now."""
        for cid, server in self._servers.items():
            table, order, _ = container_table(records, cid)
            server.update(table, networks=order)

    async def stop(self, cid: str) -> None:
        """The container's namespace is about to go: stop its server (its rules go with it)."""
        server = self._servers.pop(cid, None)
        if server is not None:
            await server.close(remove_rules=False)

    async def restore(self, records: list[dict[str, Any]], skip: Callable[[str], bool]) -> None:
        """After a daemon restart: serve again every container on a user-defined network whose
        namespace is still there (`skip`: containers served by a swarm overlay's DNS)."""
        cids = {c for r in records if not r.get("_default") for c in r["Containers"]}
        for cid in sorted(cids):
            if self._namespace(cid).exists() and not skip(cid):
                try:
                    await self.ensure(cid, records)
                except (OSError, NatError) as e:
                    log.warning("embedded DNS of container %s not restored: %s", cid[:12], e)

    async def close(self) -> None:
        """The daemon stops: stop serving (the containers keep their namespaces and rules)."""
        servers, self._servers = list(self._servers.values()), {}
        closing = [asyncio.ensure_future(server.close(remove_rules=False)) for server in servers]
        try:
            await asyncio.gather(*closing)
        except BaseException:
            await cancel_and_wait(closing)
            raise
