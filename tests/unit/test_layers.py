"""The package layers of ../shared/DESIGN.md §2, checked on every import statement.

Leaves (model, raft, rpc, ca, engineapi, aio) import no shoal package above them; the roles
(manager, worker, overlay, ingress) import only leaves, never each other; only the composition
root (node) and the edges (cli, bench, tests) import the roles; nothing outside tests imports
tests, and no product package imports bench. A wrong import fails with its file and line.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

LEAVES = {"model", "raft", "rpc", "ca", "engineapi", "aio"}
ROLES = {"manager", "worker", "overlay", "ingress"}
PRODUCT = LEAVES | ROLES | {"node", "cli"}
SHOAL = PRODUCT | {"bench", "tests"}

# What each package may import of shoal, besides itself.
ALLOWED: dict[str, set[str]] = {
    "model": set(),
    "aio": set(),
    "raft": set(),                      # a library of its own: nothing else of shoal
    "rpc": {"model", "aio"},
    "ca": {"model", "aio"},
    "engineapi": {"model", "aio"},
    **{role: set(LEAVES) for role in ROLES},
    "node": LEAVES | ROLES,
    "cli": LEAVES | ROLES | {"node"},
    "bench": PRODUCT | {"bench"},
    "tests": SHOAL,
}


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    imported: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.imported}"


def imports_of(source: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in a module, nested ones included."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(package: str, path: str, source: str) -> list[Violation]:
    allowed = ALLOWED[package] | {package}
    return [Violation(path, line, top) for line, top in imports_of(source)
            if top in SHOAL and top not in allowed]


def all_violations() -> list[Violation]:
    found: list[Violation] = []
    for package in ALLOWED:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            found += violations(package, rel, path.read_text())
    return found


def test_every_top_level_package_has_a_layer() -> None:
    """A new package with Python in it must be placed in the table, or its imports go unchecked
    (and an import of it from anywhere would pass)."""
    with_python = {top.name for top in REPO.iterdir()
                   if top.is_dir() and not top.name.startswith(".") and next(top.rglob("*.py"), None)}
    assert with_python - set(ALLOWED) == set(), "packages without a layer in ALLOWED"


def test_every_package_imports_only_what_its_layer_allows() -> None:
    found = all_violations()
    assert not found, "layer violations:\n" + "\n".join(map(str, found))


@pytest.mark.parametrize(("package", "line", "wrong"), [
    ("manager", "from worker.agent.agent import Agent", "worker"),          # roles never import each other
    ("worker", "from manager.store import Store", "manager"),
    ("overlay", "import worker.executor", "worker"),
    ("ingress", "from manager.api import networks", "manager"),
    ("rpc", "from manager.dispatcher import Dispatcher", "manager"),       # leaves know no role
    ("raft", "from model import Node", "model"),                          # raft stands alone
    ("model", "from raft.types import Entry", "raft"),
    ("manager", "from node.daemon import serve", "node"),                 # nothing below node imports it
    ("cli", "from tests.support.wait import wait_until", "tests"),        # nothing imports tests
    ("node", "from bench.support.swarm_sim import make_node", "bench"),   # product never imports bench
])
def test_a_planted_wrong_import_is_caught_with_its_line(package: str, line: str, wrong: str) -> None:
    source = f'"""A module."""\n\nimport asyncio\n\n\ndef f() -> None:\n    {line}\n'
    found = violations(package, f"{package}/planted.py", source)
    assert [(v.line, v.imported) for v in found] == [(7, wrong)]
    assert str(found[0]) == f"{package}/planted.py:7: imports {wrong}"


@pytest.mark.parametrize(("package", "line"), [
    ("node", "from manager.store import Store"),
    ("node", "from worker.agent.agent import Agent"),
    ("worker", "from rpc.client import RpcClient"),
    ("manager", "from engineapi.http import ApiError"),
    ("overlay", "from model import Network"),
    ("tests", "from bench.support.kvcluster import KVCluster"),
])
def test_allowed_imports_pass(package: str, line: str) -> None:
    assert violations(package, f"{package}/ok.py", f"{line}\n") == []
