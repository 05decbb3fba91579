"""What every contract class shares: the fixtures, the ground-truth hooks, the capabilities."""

from __future__ import annotations

import pickle
from typing import ClassVar

import pytest

from filespool.backends.base import Backend
from filespool.store import FileStore


class ContractBase:
    """The fixtures, hooks and capability flags of `filespool.testing`'s test classes.

    A backend's test class overrides `backend` and the two ground-truth hooks, and sets
    the capability flags its storage offers; a test of a capability the storage lacks is
    skipped, never failed.
    """

    atomic_moves: ClassVar[bool] = False
    """Moves are atomic to readers: a moving file is never seen in both folders, nor in
    neither. Moves made of two steps (copy or link, then delete) are not."""

    shared_by_processes: ClassVar[bool] = False
    """Backends pickle, and a copy unpickled in another process reaches the same files."""

    race_rounds: ClassVar[int] = 30
    """How many times each race is run; lower it for slow storage."""

    state_machine_examples: ClassVar[int] = 25
    """How many random runs of queue steps the state machine tries; lower it for slow
    storage."""

    @pytest.fixture
    def backend(self) -> Backend:
        """Override: a backend on a fresh location whose root does not exist yet."""
        raise NotImplementedError("override the `backend` fixture to test a backend")

    @pytest.fixture
    def store(self, backend: Backend) -> FileStore:
        """A store on the backend, not prepared."""
        return FileStore(backend)

    @pytest.fixture
    def prepared(self, store: FileStore) -> FileStore:
        """The store, prepared."""
        store.prepare()
        return store

    def write_directly(self, backend: Backend, path: str, data: bytes) -> None:
        """Override: write `data` at `path` (relative to the root, e.g. `new/sub/file`,
        folders made as needed) without going through the backend under test."""
        raise NotImplementedError("override write_directly() to give the suite ground truth")

    def read_directly(self, backend: Backend, path: str) -> bytes | None:
        """Override: the content at `path` (relative to the root), or None if no file is
        there, read without going through the backend under test."""
        raise NotImplementedError("override read_directly() to give the suite ground truth")

    def interrupt_move(self, backend: Backend, source: str, name: str, destination: str) -> None:
        """Override if moves take two steps: do the first step of moving `source/name` to
        `destination/name` and stop, as a mover that died in between would have."""
        pytest.skip("moves take one step here: no move can be interrupted")

    def again(self, store: FileStore) -> FileStore:
        """A second handle on the same store, as another worker would have: an unpickled
        copy where backends pickle (`shared_by_processes`), else one on the same backend."""
        if self.shared_by_processes:
            copy: FileStore = pickle.loads(pickle.dumps(store))
            return copy
        return FileStore(store.backend, durable=store.durable, max_attempts=store.max_attempts)

    def require(self, capability: str) -> None:
        """Skip the calling test unless the storage offers `capability`."""
        if not getattr(self, capability):
            pytest.skip(f"{type(self).__name__} does not declare {capability}")
