"""Choosing a backend by URL: built-ins, register(), and entry points."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

import filespool.backends as registry
from filespool import FileStore, UnsupportedLocation
from filespool.backends.base import Backend
from filespool.backends.memory import MemoryBackend


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(UnsupportedLocation, match=r"'nope'.*file, memory"):
        FileStore("nope://bucket/jobs")
    with pytest.raises(ValueError, match="nope"):
        FileStore("nope://bucket/jobs")


def test_scheme_is_case_insensitive() -> None:
    assert FileStore("MEMORY://jobs").url == "memory://jobs"


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts from the built-ins, with entry points read anew."""
    monkeypatch.setattr(registry, "_registered", {})
    monkeypatch.setattr(registry, "_resolved", {})
    registry._entry_points.cache_clear()
    yield
    registry._entry_points.cache_clear()


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, points: dict[str, str]) -> list[int]:
    """Installed packages' entry points, by scheme; returns a count of the reads."""
    reads = [0]

    def read(group: str) -> list[EntryPoint]:
        assert group == registry.ENTRY_POINT_GROUP
        reads[0] += 1
        return [EntryPoint(name=n, value=v, group=group) for n, v in points.items()]

    monkeypatch.setattr(registry, "entry_points", read)
    return reads


def test_register_adds_a_scheme() -> None:
    seen: dict[str, Any] = {}

    def factory(url: str, **options: Any) -> Backend:
        seen.update(url=url, options=options)
        return MemoryBackend("registered")

    registry.register("Mine", factory)
    store = FileStore("mine://x/y", region="eu")
    assert seen == {"url": "mine://x/y", "options": {"region": "eu"}}
    assert store.url == "memory://registered"
    assert "mine" in registry.schemes()


def test_entry_points_add_a_scheme_and_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = fake_entry_points(monkeypatch, {"plugged": "filespool.backends.memory:open_memory"})
    assert "plugged" in registry.schemes()
    for _ in range(3):
        assert isinstance(FileStore("plugged://jobs").backend, MemoryBackend)
        FileStore("memory://other")
    assert reads == [1]


def test_an_installed_package_cannot_take_over_a_builtin_scheme(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_entry_points(monkeypatch, {"file": "filespool.backends.memory:open_memory"})
    assert FileStore(tmp_path).url == f"file://{tmp_path}"
    assert FileStore(f"file://{tmp_path}").url == f"file://{tmp_path}"


def test_a_known_scheme_is_replaced_only_with_clobber(tmp_path: Path) -> None:
    def factory(url: str, **options: Any) -> Backend:
        return MemoryBackend("clobbered")

    for scheme in ("file", "memory"):
        with pytest.raises(ValueError, match="clobber=True"):
            registry.register(scheme, factory)
    registry.register("mine", factory)
    with pytest.raises(ValueError, match="clobber=True"):
        registry.register("MINE", factory)
    FileStore(tmp_path)  # resolved once: the replacement must still take effect
    registry.register("file", factory, clobber=True)
    assert FileStore(tmp_path).url == "memory://clobbered"


@pytest.mark.parametrize("location", ["1x://jobs", "a b://jobs", "://jobs", "x_y://jobs"])
def test_a_malformed_scheme_is_refused_with_a_clear_error(location: str) -> None:
    with pytest.raises(UnsupportedLocation, match="is not a URL scheme"):
        FileStore(location)


def test_a_backend_instance_is_used_as_is(tmp_path: Path) -> None:
    backend = MemoryBackend("instance")
    assert FileStore(backend).backend is backend
    with pytest.raises(TypeError, match="backend's constructor"):
        FileStore(backend, anon=True)


def test_path_like_locations_are_local(tmp_path: Path) -> None:
    assert FileStore(tmp_path).url == f"file://{tmp_path}"
