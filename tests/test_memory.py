"""The in-memory backend: the contract, plus sharing by name."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import fsspec
import pytest

from filespool import FileStore
from filespool.backends.base import Backend
from filespool.backends.memory import MemoryBackend
from filespool.testing import AsyncFace, SpoolContract


@pytest.fixture
def memory_url() -> Iterator[str]:
    url = f"memory://test-{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


@pytest.mark.slow  # the contract's code is the same on every Python: TestLocal runs it there
class TestMemory(SpoolContract):
    atomic_moves = True  # under one lock

    @pytest.fixture
    def backend(self, memory_url: str) -> Backend:
        return MemoryBackend(memory_url.removeprefix("memory://"))

    def write_directly(self, backend: Backend, path: str, data: bytes) -> None:
        fsspec.filesystem("memory").pipe_file(f"{backend.url}/{path}", data)

    def read_directly(self, backend: Backend, path: str) -> bytes | None:
        try:
            data: bytes = fsspec.filesystem("memory").cat_file(f"{backend.url}/{path}")
        except FileNotFoundError:
            return None
        return data


@pytest.mark.slow
class TestMemoryAsyncFace(TestMemory):
    """The contract through `call_async`'s default: each call in a worker thread."""

    @pytest.fixture
    def backend(self, memory_url: str) -> Iterator[Backend]:
        face = AsyncFace(MemoryBackend(memory_url.removeprefix("memory://")))
        yield face
        face.close()


def test_stores_of_one_name_share_files_and_others_do_not(memory_url: str) -> None:
    first, second = FileStore(memory_url), FileStore(memory_url)
    other = FileStore(memory_url + "-other")
    first.prepare()
    other.prepare()
    name = first.deliver(b"x")
    assert second.names("new") == [name]
    assert other.names("new") == []
    assert second.claim() == name
    assert first.claim() is None


def test_fsspec_opens_listed_paths(memory_url: str) -> None:
    store = FileStore(memory_url)
    store.prepare()
    store.deliver(b"payload", "job")
    [path] = store.list("new")
    assert path == f"{memory_url}/new/job"
    with fsspec.open(path, "rb") as file:
        assert file.read() == b"payload"


def test_memory_needs_a_name() -> None:
    with pytest.raises(ValueError, match="needs a name"):
        FileStore("memory://")
