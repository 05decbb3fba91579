"""The Azure lane: Azurite, started and stopped by the tests themselves.

``nox -s azure`` installs Azurite with npm and names the install in ``FILESPOOL_AZURITE``;
without it the module skips (the plain ``pytest`` of the README does not run it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

AZURITE = "FILESPOOL_AZURITE"


@pytest.fixture(scope="session")
def endpoint() -> Iterator[str]:
    """Azurite's Blob endpoint, ``http://127.0.0.1:<port>``, for the whole session."""
    from azurite_launch import azurite

    installed = os.environ.get(AZURITE)
    if not installed:
        pytest.skip(f"needs Azurite: run `nox -s azure`, or set {AZURITE}")
    # The SDK logs every request at INFO, and every refused condition at WARNING.
    logging.getLogger("azure").setLevel(logging.ERROR)
    with azurite(installed) as url:
        yield url


@pytest.fixture
def container(endpoint: str) -> str:
    """A fresh container for each test."""
    from azure_servers import new_container

    return new_container(endpoint)
