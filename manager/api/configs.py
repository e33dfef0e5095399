"""Engine API handlers for configs: the secrets implementation with the config rules
(Data is returned on inspect; the same create/list/inspect/update/remove semantics)."""

from __future__ import annotations

from engineapi.http import Routes
from manager.api.secrets import CONFIGS, add_kind_routes


def add_routes(routes: Routes) -> None:
    add_kind_routes(routes, CONFIGS)
