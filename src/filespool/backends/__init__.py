"""Storage backends, and the registry that picks one by URL scheme.

Built in: plain paths and `file://` (`LocalBackend`), `memory://` (`MemoryBackend`),
`s3://` (`S3Backend`), and `az://` and `abfs://` (`AzureBackend`). A third party adds a
scheme with `register`, or without any import through the entry-point group
`filespool.backends`, for example in its `pyproject.toml`:

    [project.entry-points."filespool.backends"]
    myscheme = "mypackage.spool:open_backend"

A factory is called as `factory(url, **storage_options)` and returns a
`Backend`. Built-in schemes always win over entry points, and `register` replaces
a known scheme only with `clobber=True`: an installed package cannot take over
`file://` behind a program's back. Entry points are read once per process.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
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
    "az": "filespool.backends.azure:open_azure",
    "abfs": "filespool.backends.azure:open_azure",
}
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")  # RFC 3986, lowercased
_registered: dict[str, BackendFactory] = {}
_resolved: dict[str, BackendFactory] = {}  # what each scheme opened with, for the next time


def register(scheme: str, factory: BackendFactory, *, clobber: bool = False) -> None:
    """Make `FileStore("<scheme>://...")` use `factory`.

    A scheme already known (built in, registered, or from an installed package's entry
    point) raises `ValueError` unless `clobber=True`.
    """
    normal = _normal_scheme(scheme)
    if not clobber and normal in schemes():
        raise ValueError(
            f"URL scheme {normal!r} has a filespool backend already; pass clobber=True to "
            "replace it"
        )
    _registered[normal] = factory
    _resolved.pop(normal, None)


def schemes() -> list[str]:
    """All URL schemes a backend is known for: built-in, registered and from entry points."""
    return sorted(set(_BUILTIN) | set(_registered) | set(_entry_points()))


def open_backend(location: str | os.PathLike[str], **storage_options: Any) -> Backend:
    """Return the backend for a location: a local path or a `scheme://...` URL.

    An empty location (or `file://` with no path) raises `UnsupportedLocation`: it is
    far more often an unset variable than a wish to make the working directory a spool.
    """
    path = os.fspath(location)
    if not path.strip() or path.strip().lower() == "file://":
        raise UnsupportedLocation(
            f"the location is empty ({path!r}); give a path or a URL (for the working "
            "directory, say '.')"
        )
    if "://" not in path:
        return _factory("file")(path, **storage_options)
    scheme = path.split("://", 1)[0]
    return _factory(_normal_scheme(scheme))(path, **storage_options)


def _factory(scheme: str) -> BackendFactory:
    try:
        return _resolved[scheme]
    except KeyError:
        pass
    factory = _registered.get(scheme)
    if factory is None and scheme in _BUILTIN:
        module, attribute = _BUILTIN[scheme].split(":")
        factory = getattr(importlib.import_module(module), attribute)
    if factory is None and scheme in _entry_points():
        factory = _entry_points()[scheme].load()
    if factory is None:
        raise UnsupportedLocation(
            f"no filespool backend for URL scheme {scheme!r}; known schemes: "
            f"{', '.join(schemes())} (a path without a scheme is local); install the package "
            "that provides it, or call filespool.backends.register()"
        )
    _resolved[scheme] = factory
    return factory


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    """The installed packages' backends by scheme, read once (built-in schemes left out)."""
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        scheme = point.name.lower()
        if _SCHEME.fullmatch(scheme) and scheme not in _BUILTIN:
            found.setdefault(scheme, point)
    return found


def _normal_scheme(scheme: str) -> str:
    normal = scheme.lower()
    if not _SCHEME.fullmatch(normal):
        raise UnsupportedLocation(
            f"{scheme!r} is not a URL scheme (a letter, then letters, digits, '+', '-' or "
            "'.'); write a location as scheme://... or as a local path"
        )
    return normal
