"""engineapi/openapi.yaml lists exactly the routes a daemon registers: a route added without its
description (or a description left behind by a removed route) fails here, so the fuzzing that
runs from the description cannot silently skip a route."""

from __future__ import annotations

from pathlib import Path

import yaml

from node.daemon import DaemonConfig, build_app

OPENAPI = Path(__file__).resolve().parents[2] / "engineapi" / "openapi.yaml"
METHODS = {"get", "head", "post", "put", "delete", "patch"}


def described_routes() -> set[tuple[str, str]]:
    doc = yaml.safe_load(OPENAPI.read_text())
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item if method in METHODS}


def registered_routes(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, path) of every route of the daemon's app, without the `/v1.NN` twins."""
    app = build_app(DaemonConfig(data_dir=tmp_path / "data", socket=tmp_path / "shoal.sock"))
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert path, f"a route with no path: {route!r}"
        if path.startswith("/v{api_version}"):
            assert (route.method, path.removeprefix("/v{api_version}")) in routes
            continue
        routes.add((route.method, path))
    return routes


def test_the_description_lists_every_route_and_no_other(tmp_path: Path) -> None:
    registered, described = registered_routes(tmp_path), described_routes()
    assert len(registered) > 60
    assert sorted(registered - described) == [], "routes the daemon serves that engineapi/openapi.yaml lacks"
    assert sorted(described - registered) == [], "routes engineapi/openapi.yaml describes that the daemon lacks"


def test_the_description_is_valid_openapi() -> None:
    import schemathesis
    from schemathesis.core.result import Err

    schema = schemathesis.openapi.from_path(str(OPENAPI))
    operations = []
    for result in schema.get_all_operations():
        assert not isinstance(result, Err), f"an invalid operation: {result.err()!r}"
        operations.append(result.ok())
    assert len(operations) == len(described_routes())
