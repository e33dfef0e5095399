"""manager.allocator: network allocation on the leader (see allocator.py), a service's endpoint as
the allocator leaves it and the API's wait for it (endpoints.py), the ingress network `swarm init`
creates (ingress.py) and the init request's network settings (settings.py)."""

from manager.allocator.allocator import PENDING_MESSAGE, Allocator, wants_addresses
from manager.allocator.book import AddressBook, task_holds_addresses
from manager.allocator.endpoints import ENDPOINT_WAIT, settled_endpoint, wait_for_endpoint
from manager.allocator.ingress import INGRESS_NAME, ingress_network
from manager.allocator.ipam import VXLAN_ID_LIST, IpamError
from manager.allocator.networks import (
    PREDEFINED_LABEL,
    NetworkAllocation,
    claimed_subnets,
    find_ingress,
    is_ingress,
    needs_addresses,
    needs_ingress,
    network_vnis,
    plan_network,
)
from manager.allocator.settings import (
    NetworkSettings,
    init_network_settings,
    validate_data_path_port,
    validate_default_addr_pool,
)

__all__ = [
    "ENDPOINT_WAIT", "INGRESS_NAME", "PENDING_MESSAGE", "PREDEFINED_LABEL", "VXLAN_ID_LIST", "AddressBook",
    "Allocator", "IpamError", "NetworkAllocation", "NetworkSettings", "claimed_subnets", "find_ingress",
    "ingress_network", "init_network_settings", "is_ingress", "needs_addresses", "needs_ingress", "network_vnis",
    "plan_network", "settled_endpoint", "task_holds_addresses", "validate_data_path_port",
    "validate_default_addr_pool", "wait_for_endpoint", "wants_addresses",
]
