"""Shared helpers of the benchmark suite: payloads, places, timing, medians.

Nothing here knows about a particular contender or backend.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

MESSAGE_SIZE = 1024


def payloads(count: int) -> list[bytes]:
    """``count`` distinct 1 KiB messages; each starts with its index, so claims can be checked."""
    return [f"{index:012d}".encode().ljust(MESSAGE_SIZE, b"x") for index in range(count)]


def message_index(data: bytes) -> int:
    return int(data[:12])


def check_exactly_once(claimed: Sequence[bytes], count: int) -> str | None:
    """None if ``claimed`` holds each of the ``count`` payloads exactly once, else what is wrong."""
    if len(claimed) != count:
        return f"{len(claimed)} claims for {count} messages"
    seen = bytearray(count)
    for data in claimed:
        index = message_index(data)
        if seen[index]:
            return f"message {index} claimed twice"
        seen[index] = 1
    return None


@dataclass(frozen=True)
class Place:
    """A directory on one kind of storage: ``disk`` (the project's disk) or ``tmpfs``."""

    kind: str
    root: str

    def fresh(self, label: str) -> str:
        return tempfile.mkdtemp(prefix=f"fsbench-{label}-", dir=self.root)


def filesystem_type(path: str) -> str:
    """The filesystem type of ``path`` from /proc/mounts (longest matching mount point)."""
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            point = parts[1]
            if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) > len(
                best
            ):
                best, kind = point, parts[2]
    return kind


def places(disk_root: str, tmpfs_root: str) -> list[Place]:
    found = []
    for kind, root in (("disk", disk_root), ("tmpfs", tmpfs_root)):
        if root and os.path.isdir(root):
            found.append(Place(kind, root))
    return found


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """Collect before a timed phase and keep the cyclic collector out of it."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    with quiet_gc():
        start = time.perf_counter()
        result = function()
        elapsed = time.perf_counter() - start
    return elapsed, result


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Samples:
    """Repeated measurements of one contender in one configuration (messages per second)."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, metric: str, value: float) -> None:
        self.values.setdefault(metric, []).append(value)

    def median(self, metric: str) -> float:
        return median(self.values.get(metric, []))


def rotate(items: Sequence[Any], by: int) -> list[Any]:
    """``items`` rotated by ``by``: each repetition starts with another contender."""
    if not items:
        return []
    by %= len(items)
    return list(items[by:]) + list(items[:by])
