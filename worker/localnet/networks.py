"""Local networks (bridge driver, scope local) of one node, and the namespaces of its standalone
containers.

Theory of operation: each network is one JSON record under `<data-dir>/localnets/`, the Engine
API object itself (Id, Name, Driver "bridge", Scope "local", IPAM, Internal, Labels, Options…)
with its endpoints under `Containers` (dockerd's shape) and, privately, each endpoint's aliases
and fixed address. The records are the truth; the data path (a `BridgeDataPath`, overlay's
local_bridge in the daemon) is made to match them: a bridge per network, a veth per endpoint.
Addresses are decided here (worker.localnet.ipam); a network given no subnet takes a default
pool clear of the other local networks and of the daemon's routes (the gateway bridge's, the
host's LANs), as dockerd does. Every standalone container gets a namespace
of its own (`join`, at create) whatever its network mode (host excepted), so that it can be
connected to networks later, running or not; `release` (when it is removed) unplugs it and
removes the namespace. Mutations are serialised by one lock. `host` and `none` are the
predefined networks, as dockerd lists them.

The predefined `bridge` network (dockerd's default bridge) is a record like the others, marked
`_default`, made the first time this object is built on a data dir: its Linux bridge is
`shoal0` (never `docker0`, so a real dockerd on the same machine keeps its own), its subnet the
first of the local pools, taken from the top (172.31.0.0/16 down, then 192.168.N.0/20; never
dockerd's 172.17.0.0/16), that overlaps no route of the daemon's namespace then and no other
local network. Kept across restarts (containers live on it). The bridge itself is made when the
first container joins. A container without a network (NetworkMode "", "default" or "bridge")
joins it: an address from its subnet, the default route through its gateway, outbound NAT. As
on dockerd's default bridge, containers on it are not named to each other (no /etc/hosts peers,
no embedded DNS: their resolv.conf is the host's), take no aliases nor fixed addresses, and it
cannot be created, removed or pruned.

Containers on user-defined networks get the embedded DNS at 127.0.0.11 (a `ContainerDns`, the
daemon's node/localdns.py; none without one):
names, aliases, short IDs and their own legacy links (`EndpointConfig.Links`) resolve there.
An endpoint's `MacAddress` is used when given (else one derived from its address, as dockerd),
and `DriverOpts` and `Links` are kept for inspect.

Swarm overlays created `--attachable` are delegated to an `OverlayAttacher` (the node's, see
node/attachments.py): `join` or `connect` with a name this node has no local network for asks
it; `disconnect` and `release` tell it. Without one such names are unknown (404).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any, Protocol

from engineapi.http import ApiError
from model import format_time
from model.endpoint import endpoint_mac
from worker.executor.container_view import endpoint_id
from worker.localnet.endpoints import endpoint_extras, link_local_ips
from worker.localnet.ipam import DEFAULT_POOLS, IpamError, Pool, allocate, ipv6_pool, is_ipv6_config, pool_from_config
from worker.standalone.create import labels_match

log = logging.getLogger("shoal.localnet")

PREDEFINED = {"host": "host", "none": "null"}     # name → driver
DEFAULT_BRIDGE = "bridge"                         # dockerd's default bridge network
DEFAULT_MODES = ("", "default", DEFAULT_BRIDGE)   # NetworkMode values that join it
DEFAULT_BRIDGE_DEVICE = "shoal0"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
DOCKER0_SUBNET = IPv4Network("172.17.0.0/16")
DEFAULT_BRIDGE_POOLS = [p for p in DEFAULT_POOLS if p.prefixlen == 16][::-1] + \
    [p for p in DEFAULT_POOLS if p.prefixlen != 16]


def default_bridge_options(device: str) -> dict[str, str]:
    """dockerd's Options of its default bridge network (`docker network inspect bridge`)."""
    return {"com.docker.network.bridge.default_bridge": "true",
            "com.docker.network.bridge.enable_icc": "true",
            "com.docker.network.bridge.enable_ip_masquerade": "true",
            "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
            BRIDGE_NAME_OPTION: device,
            "com.docker.network.driver.mtu": "1500"}


class OverlayAttacher(Protocol):
    """Attachable swarm overlays for standalone containers (node/attachments.py)."""

    async def attach(self, ref: str, cid: str, name: str, namespace: Path, config: dict[str, Any],
                     way_out: bool) -> dict[str, Any] | None:
        """Attach container `cid` (its namespace at `namespace`) to the swarm network `ref`; the
        entry for its config record, or None when `ref` names no swarm network (ApiError for a
        network it cannot join). `way_out`: give it the gateway bridge and default route."""
        ...

    async def detach(self, ref: str, cid: str) -> dict[str, Any] | None:
        """Detach it from `ref`; the network's {"Id", "Name"}, None if not attached there."""
        ...

    def attached(self, cid: str) -> list[dict[str, Any]]:
        """The overlays `cid` is attached to: [{"Id", "Name"}]."""
        ...


class ContainerDns(Protocol):
    """The embedded DNS of containers on user-defined networks (node/localdns.py). `records` are
    this module's network records; a container is served by its ID, in its namespace."""

    def resolv_conf(self) -> str: ...
    async def ensure(self, cid: str, records: list[dict[str, Any]]) -> bool:
        """Serve `cid`; True if its server was started now (its resolv.conf is to be written)."""
        ...
    def refresh(self, records: list[dict[str, Any]]) -> None: ...
    async def stop(self, cid: str) -> None: ...
    async def restore(self, records: list[dict[str, Any]], skip: Callable[[str], bool]) -> None: ...
    async def close(self) -> None: ...


class BridgeDataPath(Protocol):
    """What this module needs of overlay.local_bridge (all blocking)."""

    def bridge_name(self, network_id: str) -> str: ...
    def host_veth_name(self, network_id: str, container_id: str) -> str: ...
    def ensure_bridge(self, name: str, gateway: str, masquerade: bool, gateway6: str | None = None) -> None: ...
    def remove_bridge(self, name: str) -> None: ...
    def create_namespace(self, path: Path) -> None: ...
    def remove_namespace(self, path: Path) -> None: ...
    def plug(self, bridge: str, host_end: str, namespace: Path, ifname: str, address: str, mac: str,
             gateway: str | None, address6: str | None = None, gateway6: str | None = None) -> None: ...
    def unplug(self, host_end: str) -> None: ...
    def next_ifname(self, namespace: Path) -> str: ...
    def routed_subnets(self) -> list[str]: ...
    def add_address(self, namespace: Path, ifname: str, address: str) -> None: ...


def _predefined_id(name: str) -> str:
    import hashlib
    return hashlib.sha256(f"shoal-predefined/{name}".encode()).hexdigest()


def predefined_api(name: str) -> dict[str, Any]:
    return {"Name": name, "Id": _predefined_id(name), "Created": "0001-01-01T00:00:00Z", "Scope": "local",
            "Driver": PREDEFINED[name], "EnableIPv6": False, "IPAM": {"Driver": "default", "Options": None,
                                                                     "Config": []},
            "Internal": False, "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""},
            "ConfigOnly": False, "Containers": {}, "Options": {}, "Labels": {}}


def public(record: dict[str, Any], detailed: bool) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if not k.startswith("_")}
    if not detailed:
        out["Containers"] = {}
    return out


class LocalNetworks:
    def __init__(self, root: Path, netns_dir: Path, datapath: BridgeDataPath,
                 on_event: Callable[[str, str, dict[str, str]], None] | None = None) -> None:
        self.root = root
        self.netns_dir = netns_dir
        self.datapath = datapath
        self.lock = asyncio.Lock()
        self.on_event = on_event      # (action, network ID, attributes): dockerd's network events
        # told which containers' peers changed (their /etc/hosts lists them: worker.standalone)
        self.on_change: Callable[[set[str]], Awaitable[None]] | None = None
        self.overlays: OverlayAttacher | None = None       # set by the daemon (swarm overlays)
        self._made: set[str] = set()                       # bridges made (or checked) in this life
        self.dns: ContainerDns | None = None               # set by the daemon: 127.0.0.11 on user networks
        self._ensure_default_bridge()

    def _ensure_default_bridge(self) -> None:
        """The predefined `bridge` network's record, made once per data dir (see above)."""
        records = self.records()
        if any(r.get("_default") for r in records):
            return
        taken = [Pool.from_api(r["IPAM"]["Config"][0]).subnet for r in records]
        # netlink from a thread of its own: pyroute2's sync socket cannot run in the event loop's
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="localnet-routes") as thread:
            taken += thread.submit(self._routed).result()
        pool = next((p for p in DEFAULT_BRIDGE_POOLS
                     if p != DOCKER0_SUBNET and not any(p.overlaps(t) for t in taken)), None)
        if pool is None:
            log.warning("no local pool is free for the default bridge network; it is not made")
            return
        import hashlib
        network_id = hashlib.sha256(f"shoal-default-bridge/{self.root}/{time.time()}".encode()).hexdigest()
        self._save({
            "Name": DEFAULT_BRIDGE, "Id": network_id, "Created": format_time(time.time()), "Scope": "local",
            "Driver": "bridge", "EnableIPv6": False,
            "IPAM": {"Driver": "default", "Options": None,
                     "Config": [{"Subnet": str(pool), "Gateway": str(next(pool.hosts()))}]},
            "Internal": False, "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""},
            "ConfigOnly": False, "Containers": {}, "Options": default_bridge_options(DEFAULT_BRIDGE_DEVICE),
            "Labels": {}, "_aliases": {}, "_fixed": {}, "_default": True,
        })

    def _routed(self) -> list[IPv4Network]:
        """The IPv4 subnets the daemon's namespace routes now (blocking: call from a thread)."""
        out = []
        for text in self.datapath.routed_subnets():
            try:
                route = ip_network(text, strict=False)
            except ValueError:
                continue
            if isinstance(route, IPv4Network):
                out.append(route)
        return out

    def bridge_of(self, record: dict[str, Any]) -> str:
        """The Linux bridge of a network: its `com.docker.network.bridge.name` option, else br-<id>."""
        return str((record.get("Options") or {}).get(BRIDGE_NAME_OPTION) or self.datapath.bridge_name(record["Id"]))

    def default_bridge(self) -> dict[str, Any] | None:
        return next((r for r in self.records() if r.get("_default")), None)

    def host_lines(self, cid: str) -> list[str]:
        """/etc/hosts lines naming every endpoint (itself included) of the networks `cid` is on:
        its address, then its name, short ID and aliases, as names resolve on dockerd's networks."""
        out = []
        for record in self.records():
            if cid not in record["Containers"] or record.get("_default"):
                continue
            for other, endpoint in sorted(record["Containers"].items()):
                names = [endpoint["Name"], other[:12], *record.get("_aliases", {}).get(other, [])]
                out.append(f"{endpoint['IPv4Address'].split('/')[0]}\t{' '.join(dict.fromkeys(names))}")
        return out

    async def _changed(self, record: dict[str, Any], cid: str) -> None:
        if self.on_change is not None:
            await self.on_change({*record["Containers"], cid})

    def _emit(self, action: str, record: dict[str, Any], **extra: str) -> None:
        if self.on_event is not None:
            self.on_event(action, record["Id"], {"name": record["Name"], "type": record["Driver"], **extra})

    # ---- records ---------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        out = []
        try:
            entries = sorted(self.root.glob("*.json"))
        except OSError:
            return []
        for path in entries:
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def _save(self, record: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{record['Id']}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)

    def find(self, ref: str) -> dict[str, Any] | None:
        """A network by exact ID, exact name, or unique ID prefix (predefined ones included)."""
        every = [*self.records(), *(predefined_api(n) for n in PREDEFINED)]
        for key in ("Id", "Name"):
            for record in every:
                if record[key] == ref:
                    return record
        found = [r for r in every if ref and r["Id"].startswith(ref)]
        return found[0] if len(found) == 1 else None

    def namespace(self, cid: str) -> Path:
        return self.netns_dir / cid

    # ---- networks --------------------------------------------------------------------------
    async def create(self, body: dict[str, Any]) -> str:
        name = body.get("Name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "network name is required")
        ipam = body.get("IPAM") or {}
        if not isinstance(ipam, dict) or (ipam.get("Driver") or "default") != "default":
            raise ApiError(400, "only the default IPAM driver is supported")
        labels, options = body.get("Labels") or {}, body.get("Options") or {}
        for what, mapping in (("Labels", labels), ("Options", options)):
            if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
                raise ApiError(400, f"{what} must map names to strings")
        async with self.lock:
            records = self.records()
            if name in PREDEFINED or any(r["Name"] == name for r in records):
                raise ApiError(409, f"network with name {name} already exists")
            configs = ipam.get("Config") or []
            v4_configs = [c for c in configs if not is_ipv6_config(c)] if isinstance(configs, list) else configs
            taken = [Pool.from_api(r["IPAM"]["Config"][0]).subnet for r in records]
            if not v4_configs:     # a default pool: also clear of the host's routes (as dockerd)
                taken += await asyncio.to_thread(self._routed)
            try:
                pool = pool_from_config(v4_configs, [t for t in taken if isinstance(t, IPv4Network)])
                taken6 = [n for r in records for c in r["IPAM"]["Config"]
                          if isinstance(n := ip_network(str(c["Subnet"])), IPv6Network)]
                pool6 = ipv6_pool(configs, taken6)
            except IpamError as e:
                raise ApiError(e.status, e.message) from None
            if body.get("EnableIPv6") and pool6 is None:
                raise ApiError(400, "an IPv6 network needs an IPv6 subnet in IPAM.Config (shoal's local networks "
                                    "have no default IPv6 pool)")
            network_id = secrets.token_hex(32)
            v6_configs = [c for c in configs if is_ipv6_config(c)] if isinstance(configs, list) else []
            api_configs = [pool.to_api(with_range=bool(v4_configs and v4_configs[0].get("IPRange")))]
            if pool6 is not None:
                api_configs.append(pool6.to_api(with_range=bool(v6_configs[0].get("IPRange"))))
            record = {
                "Name": name, "Id": network_id, "Created": format_time(time.time()), "Scope": "local",
                "Driver": "bridge", "EnableIPv6": pool6 is not None,
                "IPAM": {"Driver": "default", "Options": ipam.get("Options") or None, "Config": api_configs},
                "Internal": bool(body.get("Internal")), "Attachable": bool(body.get("Attachable")),
                "Ingress": False, "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Containers": {},
                "Options": options, "Labels": labels, "_aliases": {}, "_fixed": {},
            }
            gateway = f"{pool.gateway}/{pool.subnet.prefixlen}"
            gateway6 = f"{pool6.gateway}/{pool6.subnet.prefixlen}" if pool6 is not None else None
            await asyncio.to_thread(self.datapath.ensure_bridge, self.bridge_of(record), gateway,
                                    not record["Internal"], gateway6)
            self._made.add(network_id)
            self._save(record)
        self._emit("create", record)
        return network_id

    async def remove(self, ref: str) -> None:
        async with self.lock:
            record = self.find(ref)
            if record is None:
                raise ApiError(404, f"network {ref} not found")
            if record["Name"] in PREDEFINED or record.get("_default"):
                raise ApiError(403, f"{record['Name']} is a pre-defined network and cannot be removed")
            if record["Containers"]:
                raise ApiError(403, f"error while removing network: network {record['Name']} id {record['Id']} "
                                    "has active endpoints")
            await asyncio.to_thread(self.datapath.remove_bridge, self.bridge_of(record))
            self._made.discard(record["Id"])
            (self.root / f"{record['Id']}.json").unlink(missing_ok=True)
        self._emit("destroy", record)

    async def prune(self, until: float | None, labels: list[str]) -> list[str]:
        deleted = []
        for record in self.records():
            if record["Containers"] or record.get("_default") or not labels_match(record.get("Labels") or {}, labels):
                continue
            if until is not None and _created(record) >= until:
                continue
            try:
                await self.remove(record["Id"])
            except ApiError:
                continue
            deleted.append(record["Name"])
        return deleted

    # ---- containers ------------------------------------------------------------------------
    async def join(self, cid: str, name: str, mode: str, endpoints: Any) -> tuple[str, list[dict[str, Any]]]:
        """A new standalone container's namespace and the endpoints of its NetworkMode network:
        the default bridge without one, a local network, or an attachable swarm overlay."""
        if mode == "host":
            return f"/proc/{os.getpid()}/ns/net", []
        endpoints = endpoints if isinstance(endpoints, dict) else {}
        network = None
        if mode in DEFAULT_MODES:
            network = self.default_bridge()
        elif mode != "none":
            network = self.find(mode)
            if network is not None and network["Name"] in PREDEFINED:
                network = None
            if network is None and self.overlays is None:
                raise ApiError(404, f"network {mode} not found")
        path = self.namespace(cid)
        await asyncio.to_thread(self.datapath.create_namespace, path)
        if mode == "none" or (network is None and mode in DEFAULT_MODES):
            return str(path), []
        config = endpoints.get(mode) or (endpoints.get(network["Name"]) if network is not None else None) or {}
        try:
            entry = await self.connect(network["Id"] if network is not None else mode, cid, name, config)
        except BaseException:
            await self.release(cid)
            raise
        return str(path), [entry]

    async def connect(self, ref: str, cid: str, name: str, config: Any) -> dict[str, Any]:
        """Plug container `cid` into network `ref`; the entry its config records for inspect."""
        if not isinstance(config, dict):
            raise ApiError(400, "EndpointConfig must be an object")
        aliases = config.get("Aliases") or []
        ipam = config.get("IPAMConfig") or {}
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise ApiError(400, "EndpointConfig.Aliases must be a list of strings")
        if not isinstance(ipam, dict):
            raise ApiError(400, "EndpointConfig.IPAMConfig must be an object")
        fixed = str(ipam.get("IPv4Address") or "")
        fixed6 = str(ipam.get("IPv6Address") or "")
        link_local = link_local_ips(ipam.get("LinkLocalIPs"))
        links, given_mac, driver_opts = endpoint_extras(config)
        if self.find(ref) is None and self.overlays is not None:
            entry = await self.overlays.attach(ref, cid, name, self.namespace(cid), config,
                                               way_out=not self._has_way_out(cid))
            if entry is not None:
                await self._replug(cid)
                if self.on_event is not None:
                    self.on_event("connect", entry["id"], {"name": entry["name"], "type": "overlay", "container": cid})
                return entry
        async with self.lock:
            record = self.find(ref)
            if record is None:
                raise ApiError(404, f"network {ref} not found")
            if record["Name"] in PREDEFINED:
                raise ApiError(400, f"container cannot be disconnected from host network or connected to "
                                    f"{record['Name']} network")
            if cid in record["Containers"]:
                raise ApiError(403, f"endpoint with name {name} already exists in network {record['Name']}")
            if record.get("_default") and aliases:
                raise ApiError(400, "network-scoped alias is supported only for containers in user defined networks")
            if record.get("_default") and fixed:
                raise ApiError(400, "user specified IP address is supported on user defined networks only")
            pool = Pool.from_api(record["IPAM"]["Config"][0])
            pool6 = _ipv6_pool_of(record)
            if fixed6 and pool6 is None:
                raise ApiError(400, f"network {record['Name']} has no IPv6 subnet: an IPv6Address cannot be given")
            used = {ip_address(e["IPv4Address"].split("/")[0]) for e in record["Containers"].values()}
            used6 = {ip_address(e["IPv6Address"].split("/")[0]) for e in record["Containers"].values()
                     if e.get("IPv6Address")}
            try:
                address = allocate(pool, used, fixed)                                   # type: ignore[arg-type]
                address6 = allocate(pool6, used6, fixed6) if pool6 is not None else None  # type: ignore[arg-type]
            except IpamError as e:
                raise ApiError(e.status, e.message) from None
            cidr = f"{address}/{pool.subnet.prefixlen}"
            cidr6 = f"{address6}/{pool6.subnet.prefixlen}" if pool6 is not None else None
            mac = given_mac or endpoint_mac(str(address))
            if given_mac and any(e["MacAddress"] == mac for e in record["Containers"].values()):
                raise ApiError(409, f"MAC address {mac} is already in use on network {record['Name']}")
            path = self.namespace(cid)
            gateway = None if record["Internal"] else str(pool.gateway)
            gateway6 = str(pool6.gateway) if pool6 is not None and not record["Internal"] else None

            bridge = self.bridge_of(record)
            gateway_cidr = f"{pool.gateway}/{pool.subnet.prefixlen}"
            gateway6_cidr = f"{pool6.gateway}/{pool6.subnet.prefixlen}" if pool6 is not None else None
            if gateway is not None and self._has_way_out(cid):
                gateway = gateway6 = None          # its default route is another network's already

            def plug() -> None:
                if record["Id"] not in self._made:      # made lazily (the default bridge), checked once
                    self.datapath.ensure_bridge(bridge, gateway_cidr, not record["Internal"], gateway6_cidr)
                ifname = self.datapath.next_ifname(path)
                self.datapath.plug(bridge,
                                   self.datapath.host_veth_name(record["Id"], cid), path, ifname, cidr,
                                   mac, gateway, cidr6, gateway6)
                for extra in link_local:
                    self.datapath.add_address(path, ifname, f"{extra}/16")

            await asyncio.to_thread(plug)
            self._made.add(record["Id"])
            record["Containers"][cid] = {"Name": name, "EndpointID": endpoint_id(record["Id"], cid),
                                         "MacAddress": mac, "IPv4Address": cidr, "IPv6Address": cidr6 or ""}
            record["_aliases"][cid] = list(aliases)
            record.setdefault("_links", {})[cid] = links
            if fixed:
                record["_fixed"][cid] = fixed
            ipam_config = {**({"IPv4Address": fixed} if fixed else {}),
                           **({"IPv6Address": fixed6} if fixed6 else {}),
                           **({"LinkLocalIPs": link_local} if link_local else {})}
            self._save(record)
            resolv = await self._serve_dns(cid)
        self._emit("connect", record, container=cid)
        await self._changed(record, cid)
        user_defined = not record.get("_default")
        return {"id": record["Id"], "name": record["Name"], "address": cidr, "aliases": list(aliases),
                "gateway": "" if record["Internal"] else str(pool.gateway),
                "ipam_config": ipam_config or None, "mac": mac, "links": links or None,
                "driver_opts": driver_opts or None,
                "dns_names": list(dict.fromkeys([name, cid[:12], *aliases])) if user_defined else None,
                **({"resolv_conf": resolv} if resolv else {})}

    async def _serve_dns(self, cid: str) -> str:
        """Give `cid` the embedded DNS if it is on a user-defined network now (and not served by
        a swarm overlay's); every served container sees the new records. The resolv.conf to
        write when its server was started now, else ""."""
        if self.dns is None:
            return ""
        records = self.records()
        started = False
        user_defined = any(cid in r["Containers"] and not r.get("_default") for r in records)
        if user_defined and not self._on_overlay(cid):
            try:
                started = await self.dns.ensure(cid, records)
            except Exception as e:       # (OSError, nft's error) the container keeps the host's resolvers
                log.warning("no embedded DNS for container %s: %s", cid[:12], e)
        self.dns.refresh(records)
        return self.dns.resolv_conf() if started else ""

    def _on_overlay(self, cid: str) -> bool:
        """Attached to a swarm overlay: its namespace has that network's DNS at 127.0.0.11."""
        return self.overlays is not None and bool(self.overlays.attached(cid))

    async def start_dns(self) -> None:
        """The daemon starts: serve again the containers a previous daemon served."""
        if self.dns is not None:
            await self.dns.restore(self.records(), self._on_overlay)

    async def close_dns(self) -> None:
        if self.dns is not None:
            await self.dns.close()

    async def _replug(self, cid: str) -> None:
        """The overlay data path owns every veth of a namespace it attaches (it replaced them):
        plug the container's local endpoints again, same address and MAC, on the next free names."""
        path = self.namespace(cid)
        way_out = False
        for record in self.records():
            endpoint = record["Containers"].get(cid)
            if endpoint is None:
                continue
            pool = Pool.from_api(record["IPAM"]["Config"][0])
            gateway = None if record["Internal"] or way_out else str(pool.gateway)
            way_out = way_out or gateway is not None
            bridge, host_end = self.bridge_of(record), self.datapath.host_veth_name(record["Id"], cid)

            pool6 = _ipv6_pool_of(record)
            gateway6 = str(pool6.gateway) if pool6 is not None and gateway is not None else None

            def plug(bridge: str = bridge, host_end: str = host_end, endpoint: dict[str, Any] = endpoint,
                     gateway: str | None = gateway, gateway6: str | None = gateway6) -> None:
                self.datapath.unplug(host_end)
                self.datapath.plug(bridge, host_end, path, self.datapath.next_ifname(path), endpoint["IPv4Address"],
                                   endpoint["MacAddress"], gateway, endpoint.get("IPv6Address") or None, gateway6)

            await asyncio.to_thread(plug)

    def _has_way_out(self, cid: str) -> bool:
        """Has the container a default route already (a non-internal local network)?"""
        return any(cid in r["Containers"] and not r["Internal"] for r in self.records())

    async def disconnect(self, ref: str, cid: str) -> dict[str, Any]:
        if self.find(ref) is None and self.overlays is not None:
            detached = await self.overlays.detach(ref, cid)
            if detached is not None:
                if self.on_event is not None:
                    self.on_event("disconnect", detached["Id"], {"name": detached["Name"], "type": "overlay",
                                                                 "container": cid})
                return detached
        async with self.lock:
            record = self.find(ref)
            if record is None:
                raise ApiError(404, f"network {ref} not found")
            if cid not in record.get("Containers", {}):
                raise ApiError(403, f"container {cid} is not connected to network {record['Name']}")
            await asyncio.to_thread(self.datapath.unplug, self.datapath.host_veth_name(record["Id"], cid))
            del record["Containers"][cid]
            record["_aliases"].pop(cid, None)
            record["_fixed"].pop(cid, None)
            record.get("_links", {}).pop(cid, None)
            self._save(record)
            if self.dns is not None:
                self.dns.refresh(self.records())
        self._emit("disconnect", record, container=cid)
        await self._changed(record, cid)
        return record

    async def release(self, cid: str) -> None:
        """The container is gone: its endpoints and namespace go too (idempotent)."""
        for record in self.records():
            if cid in record["Containers"]:
                await self.disconnect(record["Id"], cid)
        if self.overlays is not None:
            for network in self.overlays.attached(cid):
                await self.disconnect(network["Id"], cid)
        if self.dns is not None:
            await self.dns.stop(cid)
        path = self.namespace(cid)
        if path.exists():
            await asyncio.to_thread(self.datapath.remove_namespace, path)


def _ipv6_pool_of(record: dict[str, Any]) -> Pool | None:
    return next((Pool.from_api(c) for c in record["IPAM"]["Config"] if is_ipv6_config(c)), None)


def _created(record: dict[str, Any]) -> float:
    from worker.executor.logs import LogFormatError, timestamp_seconds
    try:
        return timestamp_seconds(record["Created"])
    except (LogFormatError, KeyError):
        return 0.0

