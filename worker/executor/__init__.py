"""The worker's executor: real OCI containers under runc, with conmon as each container's shim.

Entry points: `Executor` (controllers, live restore, logs, volumes), `ContainerConfig` (what a
container is), `taskspec.config_from_task` (Engine API TaskSpec + image config → ContainerConfig).
"""

from worker.executor.controller import (
    ContainerController,
    ContainerState,
    ContainerUnhealthy,
    Controller,
    ExecutorError,
    ExitStatus,
)
from worker.executor.executor import Executor
from worker.executor.spec import ContainerConfig, Healthcheck, MountSpec, Resources

__all__ = [
    "ContainerConfig",
    "ContainerController",
    "ContainerState",
    "ContainerUnhealthy",
    "Controller",
    "Executor",
    "ExecutorError",
    "ExitStatus",
    "Healthcheck",
    "MountSpec",
    "Resources",
]
