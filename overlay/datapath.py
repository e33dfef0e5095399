"""The overlay data path of one daemon, programmed through netlink from one thread.

Theory of operation. A `DataPath` lives on a single dedicated thread (host.py owns it) that
sits in the daemon's own network namespace for its whole life; every method here blocks
and must be called on that thread. Work in other namespaces goes through netlink sockets
opened there (`netns.entered` switches the thread only while a socket is opened), so one
thread serves every namespace.

Per overlay network: a namespace `<run_dir>/netns/n-<id>` holding the bridge `br0` (the
gateway address) and `vxlan0` (enslaved; `nolearning`, `proxy`, `local` = the daemon's VTEP,
the data-path port). The VXLAN device is created in the daemon's namespace, so that its UDP
socket is bound there on the underlay, then moved (and renamed) into the network's.
Its neighbour and forwarding entries are kept equal to the peers the caller gives; the
entries last written are cached, so a call that changes nothing costs no netlink at all.

Per sandbox: a namespace `<run_dir>/netns/s-<key>`, `lo` up; one veth per attachment whose
`ethN` end is created directly inside the sandbox and whose other end is a port of the
network's bridge; unless every attachment is internal, one more veth onto the daemon's
gateway bridge, an isolated port, with the default route through it and one nftables table
masquerading the gateway subnet. Another table, `<prefix>-vxlan`, keeps the VXLAN datagrams
(UDP to the data path port) out of the daemon's namespace's conntrack, which its nat tables
turn on.

Everything is idempotent and level-triggered: each call compares what exists (the kernel,
or the records in run_dir, see state.py) with what is wanted and changes the difference,
so a daemon restarted over a running data path leaves running containers uncut.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from model.endpoint import endpoint_mac
from overlay import firewall, netns, plan
from overlay.links import (
    OverlayError,
    add_link,
    delete_link,
    get_link,
    ipr_in,
    ipv4_addresses,
    link_index,
    missing,
    must_get_link,
    set_address,
    temporary_ipr,
    veths,
    vxlan_params,
)
from overlay.neighbours import NeighbourSocket, fdb_request, neigh_request
from overlay.plan import BRIDGE, VXLAN, GatewayPool, PeerEntries, VxlanParams
from overlay.spec import Attachment, OverlaySpec, Peer, check_name
from overlay.state import AttachmentRecord, SandboxRecord, StateDir

log = logging.getLogger(__name__)

__all__ = ["AdoptReport", "DataPath", "OverlayError"]


@dataclass(frozen=True)
class AdoptReport:
    networks: tuple[str, ...]            # alive and kept from an earlier life
    sandboxes: tuple[str, ...]
    dropped: tuple[str, ...]             # records, namespaces or devices found dead and cleaned
    errors: tuple[str, ...] = ()         # networks that could not be brought back (retry: ensure_network)


@dataclass
class _Network:
    """A network this life has opened: its spec, its sockets and what its devices are."""

    spec: OverlaySpec
    path: Path
    ipr: IPRoute
    neigh: NeighbourSocket
    bridge: int = 0
    vxlan: int = 0
    entries: PeerEntries | None = None   # what vxlan0 holds, as last written; None: ask the kernel

    def close(self) -> None:
        self.ipr.close()
        self.neigh.close()

    def current_entries(self) -> PeerEntries:
        if self.entries is None:
            self.entries = self.neigh.entries(self.vxlan)
        return self.entries


class DataPath:
    """See the module comment. Not thread-safe by design: one thread calls everything."""

    def __init__(self, local_vtep: IPv4Address, port: int, run_dir: Path, prefix: str, *,
                 home: Path | None = None, gateway_subnet: IPv4Network = plan.DEFAULT_GATEWAY_SUBNET,
                 gateway_mtu: int = 1500) -> None:
        if not 1 <= port <= 65535:
            raise ValueError(f"invalid VXLAN port {port}")
        self.local_vtep = local_vtep
        self.port = port
        self.prefix = plan.check_prefix(prefix)
        self.state = StateDir(run_dir)
        self.home = home
        self.pool = GatewayPool(gateway_subnet)
        self.gateway_mtu = gateway_mtu
        self.gateway_bridge = plan.gateway_bridge_name(prefix)
        self.nft_table = plan.nft_table_name(prefix)
        self._home_ipr: IPRoute | None = None
        self._networks: dict[str, _Network] = {}
        self._sandboxes: dict[str, SandboxRecord] | None = None
        self._gateway_index: int | None = None
        # the socket create_sandbox opened in a namespace it has just made, for the attach that
        # follows: one socket fewer to open, and no dump of a namespace known to hold only lo
        self._fresh: dict[str, IPRoute] = {}

    # ------------------------------------------------------------ life

    def start(self) -> None:
        """Move this thread into the daemon's namespace (if one was named), for good."""
        if self.home is not None:
            fd = netns.open_netns(self.home)
            try:
                netns.setns(fd)
            finally:
                os.close(fd)
        self._home_ipr = IPRoute(groups=0)
        self.state.make_dirs()
        netns.prepare_dir(self.state.netns_dir)

    def close(self) -> None:
        """Close every socket; the kernel objects stay (live restore)."""
        for ipr in self._fresh.values():
            ipr.close()
        self._fresh.clear()
        for net in self._networks.values():
            net.close()
        self._networks.clear()
        if self._home_ipr is not None:
            self._home_ipr.close()
            self._home_ipr = None

    @property
    def home_ipr(self) -> IPRoute:
        if self._home_ipr is None:
            raise OverlayError("the overlay data path is closed")
        return self._home_ipr

    # ------------------------------------------------------------ networks

    def ensure_network(self, spec: OverlaySpec) -> None:
        self.state.save_network(spec)                    # the record before the objects
        path = self.state.network_netns(spec.network_id)
        net = self._networks.get(spec.network_id)
        if not netns.is_bound(path):
            if net is not None:                          # sockets in a namespace that is gone
                net.close()
                del self._networks[spec.network_id]
                net = None
            netns.remove(path)
            netns.create(path)
            with netns.entered(path):
                netns.write_sysctl("ipv6/conf/all/disable_ipv6", "1")
                netns.write_sysctl("ipv6/conf/default/disable_ipv6", "1")
                # Frames crossing br0 need no IP netfilter hooks (nothing filters in here);
                # with br_netfilter loaded they cost a route lookup each: about a third of what
                # the overlay adds per byte. Absent knobs (module not loaded) are fine.
                for family in ("iptables", "ip6tables", "arptables"):
                    netns.write_sysctl(f"bridge/bridge-nf-call-{family}", "0")
        if net is None:
            ipr = ipr_in(path)
            with netns.entered(path):
                neigh = NeighbourSocket()
            net = self._networks[spec.network_id] = _Network(spec, path, ipr, neigh)
        net.spec = spec
        ipr = net.ipr
        bridge = get_link(ipr, BRIDGE)
        if bridge is None:
            ipr.link("add", ifname=BRIDGE, kind="bridge", mtu=spec.mtu)
            bridge = must_get_link(ipr, BRIDGE)
        net.bridge = bridge["index"]
        if bridge.get("mtu") != spec.mtu:
            ipr.link("set", index=net.bridge, mtu=spec.mtu)
        set_address(ipr, net.bridge, IPv4Interface(f"{spec.gateway}/{spec.subnet.prefixlen}"))
        if bridge["state"] != "up":
            ipr.link("set", index=net.bridge, state="up")
        vxlan = get_link(ipr, VXLAN)
        wanted = VxlanParams(vni=spec.vni, port=self.port, local=self.local_vtep)
        if vxlan is None or plan.vxlan_needs_recreate(vxlan_params(vxlan), wanted):
            self._recreate_vxlan(net, vxlan)
            return
        if vxlan["index"] != net.vxlan:
            net.vxlan, net.entries = vxlan["index"], None
        if vxlan.get("mtu") != spec.mtu:
            ipr.link("set", index=net.vxlan, mtu=spec.mtu)
        if vxlan.get("master") != net.bridge or vxlan["state"] != "up":
            ipr.link("set", index=net.vxlan, master=net.bridge, state="up")

    def _recreate_vxlan(self, net: _Network, old: Any | None) -> None:
        """Build the VXLAN device in the daemon's namespace, move it into the network's and
        enslave it; the entries an old device held are carried over."""
        spec = net.spec
        carried = PeerEntries()
        if old is not None:
            if vxlan_params(old) is not None:
                carried = net.neigh.entries(old["index"])
            net.ipr.link("del", index=old["index"])
        staging = plan.staging_vxlan_name(self.prefix, spec.vni)
        home = self.home_ipr
        add_link(home, staging, kind="vxlan", vxlan_id=spec.vni, vxlan_port=self.port,
                 vxlan_local=str(self.local_vtep), vxlan_learning=0, vxlan_proxy=1, mtu=spec.mtu)
        try:
            fd = netns.open_netns(net.path)
            try:
                home.link("set", index=link_index(home, staging), net_ns_fd=fd, ifname=VXLAN)
            finally:
                os.close(fd)
        except BaseException:
            delete_link(home, staging)
            raise
        net.vxlan = link_index(net.ipr, VXLAN)
        net.ipr.link("set", index=net.vxlan, master=net.bridge, state="up")
        net.entries = None
        self._write_entries(net, PeerEntries(), carried)
        log.info("network %s: vxlan id %d, local %s, port %d", spec.network_id, spec.vni, self.local_vtep, self.port)

    def _network(self, network_id: str) -> _Network:
        """An opened network; one an earlier life made is opened (and checked) on first use."""
        net = self._networks.get(network_id)
        if net is None:
            spec = self.state.load_networks().get(check_name("network id", network_id))
            if spec is None or not netns.is_bound(self.state.network_netns(network_id)):
                raise OverlayError(f"network {network_id} is not set up on this node")
            self.ensure_network(spec)
            net = self._networks[network_id]
        return net

    def network_path(self, network_id: str) -> Path:
        return self.state.network_netns(network_id)

    def networks(self) -> dict[str, OverlaySpec]:
        return {network_id: net.spec for network_id, net in self._networks.items()}

    def remove_network(self, network_id: str) -> None:
        path = self.state.network_netns(network_id)
        net = self._networks.pop(network_id, None)
        spec = net.spec if net is not None else self.state.load_networks().get(network_id)
        if netns.is_bound(path):
            # Delete the devices now rather than when the namespace is reaped (asynchronously):
            # the VXLAN id must be free again the moment this returns.
            with contextlib.ExitStack() as stack:
                ipr = net.ipr if net is not None else stack.enter_context(temporary_ipr(path))
                for link in ipr.get_links():
                    if link.get("ifname") != "lo":
                        with contextlib.suppress(NetlinkError):
                            ipr.link("del", index=link["index"])
        if net is not None:
            net.close()
        netns.remove(path)
        if spec is not None:
            delete_link(self.home_ipr, plan.staging_vxlan_name(self.prefix, spec.vni))
        self.state.drop_network(network_id)
        for record in list(self._records().values()):
            kept = tuple(a for a in record.attachments if a.network_id != network_id)
            if kept != record.attachments:
                self._save_sandbox(replace(record, attachments=kept))

    def reconcile(self, specs: Iterable[OverlaySpec]) -> None:
        wanted = {spec.network_id: spec for spec in specs}
        for network_id in set(self._networks) | set(self.state.load_networks()):
            if network_id not in wanted:
                self.remove_network(network_id)
        for spec in wanted.values():
            self.ensure_network(spec)

    def set_local_vtep(self, vtep: IPv4Address) -> None:
        self.local_vtep = vtep
        for net in list(self._networks.values()):
            self.ensure_network(net.spec)

    # ------------------------------------------------------------ peers

    def _write_entries(self, net: _Network, current: PeerEntries, wanted: PeerEntries) -> int:
        steps = plan.plan_peers(current, wanted)
        if steps.empty:
            net.entries = wanted
            return 0
        index = net.vxlan
        deletes = ([neigh_request(False, index, e) for e in steps.neigh_del]
                   + [fdb_request(False, index, e) for e in steps.fdb_del])
        adds = ([neigh_request(True, index, e) for e in steps.neigh_add]
                + [fdb_request(True, index, e) for e in steps.fdb_add])
        net.entries = None                               # unknown until both batches are through
        net.neigh.run(deletes, missing_ok=True)
        net.neigh.run(adds)
        net.entries = wanted
        return len(deletes) + len(adds)

    def set_peers(self, network_id: str, peers: Iterable[Peer]) -> int:
        """Make the network's entries exactly those of `peers`; the number of entries changed."""
        wanted = plan.wanted_entries(peers, self.local_vtep)
        net = self._network(network_id)
        return self._write_entries(net, net.current_entries(), wanted)

    def peers(self, network_id: str) -> set[Peer]:
        """The peers as the kernel holds them (not the cache)."""
        net = self._network(network_id)
        return net.neigh.entries(net.vxlan).peers()

    # ------------------------------------------------------------ sandboxes

    def _records(self) -> dict[str, SandboxRecord]:
        if self._sandboxes is None:
            self._sandboxes = self.state.load_sandboxes()
        return self._sandboxes

    def _save_sandbox(self, record: SandboxRecord) -> None:
        self.state.save_sandbox(record)
        self._records()[record.key] = record

    def _drop_sandbox(self, key: str) -> None:
        self.state.drop_sandbox(key)
        self._records().pop(key, None)

    def sandboxes(self) -> dict[str, SandboxRecord]:
        return dict(self._records())

    def sandbox_path(self, key: str) -> Path:
        return self.state.sandbox_netns(key)

    def create_sandbox(self, key: str) -> Path:
        path = self.state.sandbox_netns(key)
        if key not in self._records():
            self._save_sandbox(SandboxRecord(key))
        if netns.is_bound(path):
            return path
        netns.remove(path)
        self._drop_fresh(key)
        netns.create(path)
        with netns.entered(path):
            netns.write_sysctl("ipv6/conf/default/disable_ipv6", "1")
        ipr = ipr_in(path)
        try:
            ipr.link("set", index=1, state="up")       # lo is always index 1 in a new namespace
        except BaseException:
            ipr.close()
            raise
        self._fresh[key] = ipr
        return path

    def _drop_fresh(self, key: str) -> None:
        ipr = self._fresh.pop(key, None)
        if ipr is not None:
            ipr.close()

    def delete_sandbox(self, key: str) -> None:
        self._drop_fresh(key)
        self.detach(key)
        netns.remove(self.state.sandbox_netns(key))
        self._drop_sandbox(key)

    def attach(self, key: str, attachments: list[Attachment], way_out: bool | None = None) -> None:
        path = self.state.sandbox_netns(key)
        if not netns.is_bound(path):
            raise OverlayError(f"sandbox {key} does not exist")
        for att in attachments:
            net = self._networks.get(att.spec.network_id)
            if net is None or net.spec != att.spec:
                self.ensure_network(att.spec)
        wanted = tuple(AttachmentRecord(att.spec.network_id, att.address, plan.container_ifname(i))
                       for i, att in enumerate(attachments))
        # A way out unless every network is internal; a sandbox on no network at all gets one
        # too, as a Docker task without networks does (through the default bridge).
        need_gateway = not attachments or not all(att.spec.internal for att in attachments)
        if way_out is not None:
            need_gateway = way_out
        record = self._records().get(key) or SandboxRecord(key)
        fresh = self._fresh.pop(key, None)
        with contextlib.ExitStack() as stack:
            if fresh is not None:                    # made by create_sandbox just now: only lo
                sandbox = stack.enter_context(contextlib.closing(fresh))
                present: dict[str, Any] = {}
            else:
                sandbox = stack.enter_context(temporary_ipr(path))
                present = veths(sandbox)
            if (record.attachments == wanted and (record.gateway is not None) == need_gateway
                    and _matches(present, record)):
                return
            if record.attachments or record.gateway or present:
                self._detach(key, sandbox)
            gateway = None
            if need_gateway:
                used = [r.gateway.ip for r in self._records().values() if r.gateway is not None]
                try:
                    gateway = self.pool.allocate(used)
                except ValueError as exc:
                    raise OverlayError(str(exc)) from None
            record = SandboxRecord(key, wanted, gateway,
                                   plan.container_ifname(len(wanted)) if gateway is not None else None)
            self._save_sandbox(record)     # the record (and its gateway address) before the devices
            try:
                with _open_fd(path) as sandbox_fd:
                    for att, rec in zip(attachments, wanted, strict=True):
                        self._plug_overlay(att, rec.ifname, sandbox_fd, sandbox)
                    if gateway is not None and record.gateway_ifname is not None:
                        self._plug_gateway(gateway, record.gateway_ifname, sandbox_fd, sandbox)
            except BaseException:
                with contextlib.suppress(Exception):
                    self._detach(key, sandbox)
                raise

    def _plug_overlay(self, att: Attachment, ifname: str, sandbox_fd: int, sandbox: IPRoute) -> None:
        spec = att.spec
        net = self._networks[spec.network_id]
        add_link(net.ipr, plan.overlay_veth_name(att.address.ip), kind="veth", mtu=spec.mtu,
                 master=net.bridge, state="up",
                 peer={"ifname": ifname, "net_ns_fd": sandbox_fd, "mtu": spec.mtu,
                       "address": endpoint_mac(att.address.ip), "group": plan.SANDBOX_LINK_GROUP})
        _configure_inner(sandbox, ifname, att.address)

    def _plug_gateway(self, address: IPv4Interface, ifname: str, sandbox_fd: int, sandbox: IPRoute) -> None:
        bridge = self.ensure_gateway_bridge()
        home = self.home_ipr
        outer = plan.gateway_veth_name(self.prefix, address.ip)
        add_link(home, outer, kind="veth", mtu=self.gateway_mtu, master=bridge, state="up",
                 peer={"ifname": ifname, "net_ns_fd": sandbox_fd, "mtu": self.gateway_mtu,
                       "address": endpoint_mac(address.ip), "group": plan.SANDBOX_LINK_GROUP})
        # Sandboxes must not reach each other over the gateway bridge (Docker's
        # enable_icc=false): an isolated port forwards only to non-isolated ones, the bridge.
        home.brport("set", index=link_index(home, outer), isolated=1)
        index = _configure_inner(sandbox, ifname, address)
        sandbox.route("add", dst="0.0.0.0/0", gateway=str(self.pool.gateway.ip), oif=index)

    def detach(self, key: str) -> None:
        path = self.state.sandbox_netns(key)
        if netns.is_bound(path):
            with temporary_ipr(path) as sandbox:
                self._detach(key, sandbox)
        else:
            self._detach(key, None)

    def _detach(self, key: str, sandbox: IPRoute | None) -> None:
        if sandbox is not None:                           # the veths' other ends go with them
            try:
                sandbox.link("del", group=plan.SANDBOX_LINK_GROUP)
            except NetlinkError as exc:
                if not missing(exc):
                    raise
            for link in veths(sandbox).values():          # any made outside the group
                with contextlib.suppress(NetlinkError):
                    sandbox.link("del", index=link["index"])
        record = self._records().get(key)
        if record is None:
            return
        # Without its namespace the veths are gone already, but a half-made attach may have
        # left outer ends behind: delete those by name.
        if sandbox is None:
            if record.gateway is not None:
                delete_link(self.home_ipr, plan.gateway_veth_name(self.prefix, record.gateway.ip))
            for att in record.attachments:
                net = self._networks.get(att.network_id)
                if net is not None:
                    delete_link(net.ipr, plan.overlay_veth_name(att.address.ip))
        if record.attachments or record.gateway is not None:
            self._save_sandbox(SandboxRecord(key))

    # ------------------------------------------------------------ gateway bridge

    def ensure_gateway_bridge(self, verify: bool = False) -> int:
        """The gateway bridge, its address, forwarding and the masquerade table; checked in
        the kernel once per life (or when asked to verify), then taken as given."""
        if self._gateway_index is not None and not verify:
            return self._gateway_index
        home = self.home_ipr
        bridge = get_link(home, self.gateway_bridge)
        if bridge is None:
            home.link("add", ifname=self.gateway_bridge, kind="bridge", mtu=self.gateway_mtu)
            bridge = must_get_link(home, self.gateway_bridge)
        index = int(bridge["index"])
        set_address(home, index, self.pool.gateway)
        if bridge["state"] != "up":
            home.link("set", index=index, state="up")
        if self._gateway_index is None:
            netns.write_sysctl("ipv4/ip_forward", "1")
            firewall.install_host_tables(self.prefix, self.nft_table, self.pool.subnet, self.gateway_bridge, self.port)
        self._gateway_index = index
        return index

    def remove_gateway_bridge(self) -> None:
        delete_link(self.home_ipr, self.gateway_bridge)
        firewall.remove_host_tables(self.prefix, self.nft_table, self.gateway_bridge)
        self._gateway_index = None

    # ------------------------------------------------------------ live restore

    def adopt(self) -> AdoptReport:
        """Take over what an earlier life of the daemon left in run_dir: keep what is alive (no
        device is re-created unless its VTEP or port changed), forget what is dead."""
        dropped: list[str] = []
        errors: list[str] = []
        home = self.home_ipr
        for link in home.get_links():
            name = link.get("ifname") or ""
            if plan.is_staging_vxlan_name(self.prefix, name):
                delete_link(home, name)
                dropped.append(f"device {name}")
        specs = self.state.load_networks()
        for network_id, spec in specs.items():
            if netns.is_bound(self.state.network_netns(network_id)):
                try:
                    self.ensure_network(spec)
                except (OSError, NetlinkError, OverlayError) as exc:   # the others still come back
                    log.exception("network %s: cannot adopt", network_id)
                    errors.append(f"network {network_id}: {exc}")
            else:
                self.remove_network(network_id)
                dropped.append(f"network {network_id}")
        records = self._records()
        for entry in sorted(self.state.netns_dir.iterdir()):
            parsed = plan.parse_netns_name(entry.name)
            if parsed is None:
                continue
            kind, name = parsed
            if not netns.is_bound(entry):
                netns.remove(entry)
            elif kind == "network" and name not in specs:
                self.remove_network(name)
                dropped.append(f"network namespace {entry.name}")
            elif kind == "sandbox" and name not in records:
                self._save_sandbox(self._recover_record(name, entry))
        for key in list(records):
            if not netns.is_bound(self.state.sandbox_netns(key)):
                self._detach(key, None)
                self._drop_sandbox(key)
                dropped.append(f"sandbox {key}")
        if any(r.gateway is not None for r in records.values()):
            self.ensure_gateway_bridge(verify=True)
        return AdoptReport(tuple(sorted(self._networks)), tuple(sorted(records)), tuple(dropped), tuple(errors))

    def _recover_record(self, key: str, path: Path) -> SandboxRecord:
        """The record of a live sandbox whose record was lost, rebuilt from its interfaces, so
        its gateway address is not handed out twice and its attachments are not re-plugged."""
        attachments = []
        gateway = gateway_ifname = None
        with temporary_ipr(path) as sandbox:
            for name, link in sorted(veths(sandbox).items(), key=lambda item: (len(item[0]), item[0])):
                for address in ipv4_addresses(sandbox, link["index"]):
                    if address.network == self.pool.subnet:
                        gateway, gateway_ifname = address, name
                    for net in self._networks.values():
                        if address.network == net.spec.subnet:
                            attachments.append(AttachmentRecord(net.spec.network_id, address, name))
        return SandboxRecord(key, tuple(attachments), gateway, gateway_ifname)

    def purge(self) -> None:
        """Remove everything this data path made (the node leaves the swarm)."""
        for key in list(self._records()):
            self.delete_sandbox(key)
        for network_id in set(self._networks) | set(self.state.load_networks()):
            self.remove_network(network_id)
        self.remove_gateway_bridge()


def _matches(present: dict[str, Any], record: SandboxRecord) -> bool:
    names = {a.ifname for a in record.attachments}
    if record.gateway_ifname:
        names.add(record.gateway_ifname)
    return set(present) == names and all(present[name]["state"] == "up" for name in names)


def _configure_inner(sandbox: IPRoute, ifname: str, address: IPv4Interface) -> int:
    index = link_index(sandbox, ifname)
    sandbox.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
    sandbox.link("set", index=index, state="up")
    return index


@contextlib.contextmanager
def _open_fd(path: Path) -> Iterator[int]:
    fd = netns.open_netns(path)
    try:
        yield fd
    finally:
        os.close(fd)
