"""manager.specs: Engine API spec validation (SpecError -> HTTP 400) and server defaults."""

from manager.specs.constraints import Constraint, node_value, parse_constraint, parse_constraints
from manager.specs.errors import SpecError
from manager.specs.others import (
    check_secret_update,
    default_swarm_spec,
    normalize_swarm_spec,
    validate_config_spec,
    validate_network_create,
    validate_node_spec,
    validate_secret_spec,
    validate_swarm_spec,
)
from manager.specs.policies import RestartPolicy, UpdateConfig, placement_constraints, restart_policy, update_config
from manager.specs.service import (
    INVALID_ARGUMENT,
    insert_service_defaults,
    normalize_service_spec,
    validate_name,
    validate_service_spec,
)

__all__ = [
    "INVALID_ARGUMENT", "Constraint", "RestartPolicy", "SpecError", "UpdateConfig", "check_secret_update",
    "default_swarm_spec",
    "insert_service_defaults", "node_value", "normalize_service_spec", "normalize_swarm_spec",
    "parse_constraint", "parse_constraints", "placement_constraints", "restart_policy", "update_config",
    "validate_config_spec", "validate_name", "validate_network_create", "validate_node_spec",
    "validate_secret_spec", "validate_service_spec", "validate_swarm_spec",
]
