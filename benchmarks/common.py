"""Shared helpers of the benchmark suite: payloads, places, timing, medians.

Nothing here knows about a particular contender or backend.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from filespool.demo import ExactlyOnce

MESSAGE_SIZE = 1024
PHASES = ("deliver", "claim", "round trip", "round trip CPU")
"""Rates (messages per second) of a round trip: wall time per phase and in all, and the
process CPU time of the whole (steadier than wall time under other tenants' load)."""


def payloads(count: int) -> list[bytes]:
    """``count`` distinct 1 KiB messages; each starts with its index, so claims can be checked."""
    return [f"{index:012d}".encode().ljust(MESSAGE_SIZE, b"x") for index in range(count)]


def message_index(data: bytes) -> int:
    return int(data[:12])


def check_exactly_once(claimed: Sequence[bytes], count: int) -> str | None:
    """None if ``claimed`` holds each of the ``count`` payloads exactly once, else what is wrong."""
    delivered = [str(index) for index in range(count)]
    return ExactlyOnce(delivered, [str(message_index(data)) for data in claimed]).problem()


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


def measure_round_trip(contender: Any, messages: Sequence[bytes]) -> tuple[dict[str, float], Any]:
    """Time ``contender.deliver_all(messages)``, then ``contender.claim_all()``.

    Returns messages per second for each of ``PHASES``, and what ``claim_all`` returned.
    """
    cpu = time.process_time()
    deliver_seconds, _ = timed(partial(contender.deliver_all, messages))
    claim_seconds, found = timed(contender.claim_all)
    cpu = time.process_time() - cpu
    count = len(messages)
    rates = {
        "deliver": count / deliver_seconds,
        "claim": count / claim_seconds,
        "round trip": count / (deliver_seconds + claim_seconds),
        "round trip CPU": count / max(cpu, 1e-9),
    }
    return rates, found


def interleaved(
    contenders: Sequence[Any],
    repeat: int,
    run_one: Callable[[Any], dict[str, float]],
    log: Callable[[str], None],
    label: str,
) -> tuple[dict[Any, Samples], dict[Any, Samples]]:
    """Run every contender ``repeat`` times, the order rotating each repetition.

    Returns each contender's samples, and its ratios to the first contender (the floor)
    in the same repetition.
    """
    samples = {c: Samples() for c in contenders}
    ratios = {c: Samples() for c in contenders}
    for repetition in range(repeat):
        this_round = {}
        for contender in rotate(contenders, repetition):
            rates = run_one(contender)
            this_round[contender] = rates
            for phase, rate in rates.items():
                samples[contender].add(phase, rate)
            log(
                f"  {label} rep {repetition + 1}/{repeat} {contender.name:30} "
                f"round trip {rates['round trip']:9.0f} msg/s"
            )
        for contender, rates in this_round.items():
            for phase, rate in rates.items():
                ratios[contender].add(phase, rate / this_round[contenders[0]][phase])
    return samples, ratios


def round_trip_row(
    contender: Any, samples: dict[Any, Samples], ratios: dict[Any, Samples], **fields: Any
) -> dict[str, Any]:
    """A result row of a round-trip section: medians per phase, ratios to the floor."""
    return {
        **fields,
        "contender": contender.name,
        "note": contender.note,
        "msg_per_s": {phase: samples[contender].median(phase) for phase in PHASES},
        "vs_floor": {phase: ratios[contender].median(phase) for phase in PHASES},
        "vs_floor_range": {
            phase: (min(ratios[contender].values[phase]), max(ratios[contender].values[phase]))
            for phase in PHASES
        },
        "samples": samples[contender].values,
    }


Column = tuple[str, str, Callable[[dict[str, Any]], Any]]
"""A table column: its title, a format spec for its values (``">9.0f"``), and the value."""


def table(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> list[str]:
    """A plain-text table: a header, a rule, and one line per row."""
    titles = []
    for title, spec, _ in columns:
        match = re.match(r"[<>^]?\d*", spec)
        titles.append(f"{title:{match.group() if match else ''}}")
    header = " ".join(titles)
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(" ".join(f"{value(row):{spec}}" for _, spec, value in columns))
    return lines
