"""overlay: VXLAN overlay networks on a node (namespaces, bridges, FDB entries).

The caller says what to build (OverlaySpec, Peer, Attachment: plain values with addresses
already decided by the allocator); an OverlayHost, one per daemon, programs the kernel to
match and keeps it matching across daemon restarts. Layout and theory: datapath.py.
"""

from model.endpoint import endpoint_mac as mac_from_ip
from overlay.datapath import AdoptReport, OverlayError
from overlay.host import OverlayHost
from overlay.plan import DEFAULT_GATEWAY_SUBNET
from overlay.spec import DEFAULT_MTU, MTU_OPTION, Attachment, OverlaySpec, Peer, mtu_from_options
from overlay.state import AttachmentRecord, SandboxRecord

__all__ = [
    "DEFAULT_GATEWAY_SUBNET",
    "DEFAULT_MTU",
    "MTU_OPTION",
    "AdoptReport",
    "Attachment",
    "AttachmentRecord",
    "OverlayError",
    "OverlayHost",
    "OverlaySpec",
    "Peer",
    "SandboxRecord",
    "mac_from_ip",
    "mtu_from_options",
]
