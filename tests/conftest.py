"""Fixtures shared by the service tests: a module defines ``server`` (its address)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sparsemm_client import Client
from tests.service_helpers import TOKEN


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[Client]:
    """A client of the module's server, with the first user's token."""
    with Client(server, token=TOKEN) as c:
        yield c
