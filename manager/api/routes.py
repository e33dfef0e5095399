"""Registers the Engine API routes of the swarm objects a manager serves from its store:
services, tasks, secrets, configs and networks, and the logs of services and tasks. Every
handler reaches the store through `app[manager.api.cluster.CLUSTER]` (503 on workers and outside
a swarm)."""

from __future__ import annotations

from engineapi.http import Routes
from manager.api import configs, logs, networks, secrets, services, tasks


def add_cluster_routes(routes: Routes) -> None:
    services.add_routes(routes)
    tasks.add_routes(routes)
    secrets.add_routes(routes)
    configs.add_routes(routes)
    networks.add_routes(routes)
    logs.add_routes(routes)
