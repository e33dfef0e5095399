"""The worker's executor: real OCI containers under runc, with conmon as each container's shim.

Entry points: `Executor` (controllers, live restore, logs, volumes), `ContainerConfig` (what a
container is), `taskspec.config_from_task` (Engine API TaskSpec + image config → ContainerConfig).
`ContainerController` implements the Controller contract of `worker.exec`, re-exported here.
"""

from worker.exec import ContainerState, Controller, ExecutorError, ExitStatus, TemporaryError
from worker.executor.controller import ContainerController, ContainerUnhealthy
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
    "TemporaryError",
]
