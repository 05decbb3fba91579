"""Fixtures of the S3 tests on moto's server. The LocalStack lane (tests/localstack) runs
from ``nox -s s3``, which provides LocalStack; it has fixtures of its own."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from s3_launch import moto_server
from s3_servers import new_bucket

collect_ignore = ["localstack"]


@pytest.fixture(scope="session")
def endpoint() -> Iterator[str]:
    """moto's server, for the whole session (started on first use)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with moto_server() as url:
        yield url


@pytest.fixture
def bucket(endpoint: str) -> str:
    """A fresh bucket on it."""
    return new_bucket(endpoint)
