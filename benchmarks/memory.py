"""Section ``memory``: the round-trip workload on ``memory://``.

The floor is fsspec's MemoryFileSystem driven directly: ``pipe_file`` into
new/, a move into cur/, ``cat_file``, ``rm_file`` (no lock, no checks: not a
safe queue, only the cost of the raw primitives). The move is ``cp_file`` +
``rm_file``, which is what ``MemoryFileSystem.mv`` does per file: ``mv``
itself first expands its paths against the whole store, which makes it
O(files) per call (about 900 moves/s with 2,000 files here) and no floor. The memory backend writes
straight into new/ under its lock (no staging is needed in memory), so the
floor does too.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from common import (
    check_exactly_once,
    interleaved,
    measure_round_trip,
    payloads,
    round_trip_row,
    table,
)
from contenders import Filespool
from local import ROUND_TRIP_COLUMNS

_serial = itertools.count()


class MemoryFloor:
    name = "floor (fsspec pipe/cp+rm)"
    note = "MemoryFileSystem.pipe_file to new/; ls once; cp_file+rm_file to cur/, cat_file, rm_file"
    is_floor = True

    def __init__(self) -> None:
        from fsspec.implementations.memory import MemoryFileSystem

        self.fs = MemoryFileSystem()
        self.root = f"/fsbench-floor-{next(_serial)}"
        for folder in ("tmp", "new", "cur"):
            self.fs.makedirs(f"{self.root}/{folder}", exist_ok=True)

    def deliver_all(self, messages: Sequence[bytes]) -> None:
        pipe = self.fs.pipe_file
        new = self.root + "/new/m"
        for index, data in enumerate(messages):
            pipe(f"{new}{index}", data)

    def claim_all(self) -> list[bytes]:
        fs = self.fs
        cur = self.root + "/cur/"
        found = []
        for path in fs.ls(self.root + "/new", detail=False):
            target = cur + path.rpartition("/")[2]
            fs.cp_file(path, target)
            fs.rm_file(path)
            found.append(fs.cat_file(target))
            fs.rm_file(target)
        return found

    def close(self) -> None:
        self.fs.rm(self.root, recursive=True)


class MemoryFilespool(Filespool):
    name = "filespool memory://"
    note = "FileStore('memory://...'): deliver(); claim(), read(), ack()"

    def __init__(self) -> None:
        from filespool import FileStore

        self.store = FileStore(f"memory://fsbench-{next(_serial)}", durable=False)
        self.store.prepare()

    def close(self) -> None:
        from fsspec.implementations.memory import MemoryFileSystem

        MemoryFileSystem().rm("/" + self.store.url.split("://", 1)[1], recursive=True)


CONTENDERS = (MemoryFloor, MemoryFilespool)


def run_workload(contender_class: Any, messages: Sequence[bytes]) -> dict[str, float]:
    """One run of one contender: messages per second for each phase."""
    contender = contender_class()
    try:
        rates, found = measure_round_trip(contender, messages)
    finally:
        contender.close()
    problem = check_exactly_once(found, len(messages))
    if problem:
        raise AssertionError(f"{contender_class.name}: {problem}")
    return rates


def run(config: Any, log: Any) -> dict[str, Any]:
    messages = payloads(config.messages)
    samples, ratios = interleaved(
        CONTENDERS, config.repeat, lambda c: run_workload(c, messages), log, "memory"
    )
    rows = [
        round_trip_row(
            c,
            samples,
            ratios,
            section="memory",
            place="memory",
            mode="-",
            messages=config.messages,
            repeat=config.repeat,
        )
        for c in CONTENDERS
    ]
    return {"rows": rows}


def summarize(result: dict[str, Any]) -> list[str]:
    return table(
        [
            ("contender", "30", lambda row: row["contender"]),
            ("N", ">6", lambda row: row["messages"]),
            *ROUND_TRIP_COLUMNS,
        ],
        result["rows"],
    )
