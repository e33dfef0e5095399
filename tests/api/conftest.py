"""Fixtures: an in-memory store and a TestClient on the cluster API app."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from manager.store import Store
from tests.api.support import StoreCluster, build_app, new_store


@pytest.fixture
def store() -> Store:
    return new_store()


@pytest.fixture
async def client(store: Store) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(build_app(StoreCluster(store)))) as c:
        yield c
