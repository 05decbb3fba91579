"""The contract every backend must meet, as pytest test classes to subclass.

A backend's whole test file can be:

    import pytest
    from filespool.testing import SpoolContract
    from mypackage import MyBackend

    class TestMyBackend(SpoolContract):
        atomic_moves = True  # the capabilities the storage offers

        @pytest.fixture
        def backend(self, tmp_path):
            return MyBackend(tmp_path / "spool")

        def write_directly(self, backend, path, data): ...  # ground truth, without
        def read_directly(self, backend, path): ...         # the backend under test

The fixture gives a backend on a fresh location whose root does not exist yet.
`SpoolContract` is `BackendContract` (each `Backend` method, called directly) and
`QueueContract` (the protocol over the backend: files, claims, fencing, races, a worker
or a batch stalled at any step) together; a test class may use either alone. Tests of a capability
the storage does not declare (`ContractBase.atomic_moves`,
`ContractBase.shared_by_processes`, `ContractBase.interrupt_move`) are skipped.
`AsyncFace` runs the contract through a backend's asyncio face (`Backend.call_async`).
Requires pytest and hypothesis.
"""

from __future__ import annotations

from filespool.testing.asyncface import AsyncFace
from filespool.testing.backend import BackendContract
from filespool.testing.faults import BATCHES, STALLABLE, StallingBackend
from filespool.testing.fixtures import ContractBase
from filespool.testing.harness import claim_in_processes, drain, race
from filespool.testing.queue import QueueContract, QueueMachine
from filespool.testing.store import StoreContract


class SpoolContract(BackendContract, QueueContract):
    """The whole contract: every guarantee of the backend and of the protocol over it."""


__all__ = [
    "BATCHES",
    "STALLABLE",
    "AsyncFace",
    "BackendContract",
    "ContractBase",
    "QueueContract",
    "QueueMachine",
    "SpoolContract",
    "StallingBackend",
    "StoreContract",
    "claim_in_processes",
    "drain",
    "race",
]
