"""Storage backends, and the registry that picks one by URL scheme.

Built in: plain paths and `file://` (`LocalBackend`)
and `memory://` (`MemoryBackend`). A third
party adds a scheme with `register`, or without any import through the
entry-point group `filespool.backends`, for example in its `pyproject.toml`:

    [project.entry-points."filespool.backends"]
    myscheme = "mypackage.spool:open_backend"

A factory is called as `factory(url, **storage_options)` and returns a
`Backend`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from filespool.backends.base import Backend
from filespool.errors import UnsupportedLocation

BackendFactory = Callable[..., Backend]
"""`factory(url: str, **storage_options) -> Backend`."""

ENTRY_POINT_GROUP = "filespool.backends"

# Built-ins are named, not imported, so that a program pays only for the backend it uses.
_BUILTIN: dict[str, str] = {
    "file": "filespool.backends.local:open_local",
    "memory": "filespool.backends.memory:open_memory",
    "s3": "filespool.backends.s3:open_s3",
}
_registered: dict[str, BackendFactory] = {}


def register(scheme: str, factory: BackendFactory) -> None:
    """Make `FileStore("<scheme>://...")` use `factory`; replaces an earlier registration."""
    _registered[_normal_scheme(scheme)] = factory


def schemes() -> list[str]:
    """All URL schemes a backend is known for: built-in, registered and from entry points."""
    found = (
        set(_BUILTIN) | set(_registered) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    )
    return sorted(found)


def open_backend(location: str | os.PathLike[str], **storage_options: Any) -> Backend:
    """Return the backend for a location: a local path or a `scheme://...` URL."""
    if isinstance(location, os.PathLike) or "://" not in location:
        return _factory("file")(os.fspath(location), **storage_options)
    scheme = location.split("://", 1)[0]
    return _factory(_normal_scheme(scheme))(location, **storage_options)


def _factory(scheme: str) -> BackendFactory:
    if scheme in _registered:
        return _registered[scheme]
    for entry_point in entry_points(group=ENTRY_POINT_GROUP, name=scheme):
        factory: BackendFactory = entry_point.load()
        return factory
    if scheme in _BUILTIN:
        module, attribute = _BUILTIN[scheme].split(":")
        builtin: BackendFactory = getattr(importlib.import_module(module), attribute)
        return builtin
    raise UnsupportedLocation(
        f"no filespool backend for URL scheme {scheme!r}; known schemes: "
        f"{', '.join(schemes())} (a path without a scheme is local); install the package "
        "that provides it, or call filespool.backends.register()"
    )


def _normal_scheme(scheme: str) -> str:
    return scheme.lower()
