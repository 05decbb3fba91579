"""Choosing a backend by URL: built-ins, register(), and entry points."""

from __future__ import annotations

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


def test_register_adds_a_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_registered", {})
    seen: dict[str, Any] = {}

    def factory(url: str, **options: Any) -> Backend:
        seen.update(url=url, options=options)
        return MemoryBackend("registered")

    registry.register("Mine", factory)
    store = FileStore("mine://x/y", region="eu")
    assert seen == {"url": "mine://x/y", "options": {"region": "eu"}}
    assert store.url == "memory://registered"
    assert "mine" in registry.schemes()


def test_entry_points_add_a_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    point = EntryPoint(
        name="plugged",
        value="filespool.backends.memory:open_memory",
        group=registry.ENTRY_POINT_GROUP,
    )

    def fake_entry_points(group: str, name: str | None = None) -> list[EntryPoint]:
        assert group == registry.ENTRY_POINT_GROUP
        return [point] if name in (None, "plugged") else []

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    assert "plugged" in registry.schemes()
    assert isinstance(FileStore("plugged://jobs").backend, MemoryBackend)


def test_a_backend_instance_is_used_as_is(tmp_path: Path) -> None:
    backend = MemoryBackend("instance")
    assert FileStore(backend).backend is backend
    with pytest.raises(TypeError, match="backend's constructor"):
        FileStore(backend, anon=True)


def test_path_like_locations_are_local(tmp_path: Path) -> None:
    assert FileStore(tmp_path).url == f"file://{tmp_path}"
