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
from functools import partial
from typing import Any

from common import Samples, check_exactly_once, payloads, rotate, timed

PHASES = ("deliver", "claim", "round trip")
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


class MemoryFilespool:
    name = "filespool memory://"
    note = "FileStore('memory://...'): deliver(); claim(), read(), ack()"
    is_floor = False

    def __init__(self) -> None:
        from filespool import FileStore

        self.store = FileStore(f"memory://fsbench-{next(_serial)}", durable=False)
        self.store.prepare()

    def deliver_all(self, messages: Sequence[bytes]) -> None:
        deliver = self.store.deliver
        for data in messages:
            deliver(data)

    def claim_all(self) -> list[bytes]:
        claim = self.store.claim
        found = []
        while (claimed := claim()) is not None:
            found.append(claimed.read())
            claimed.ack()
        return found

    def close(self) -> None:
        from fsspec.implementations.memory import MemoryFileSystem

        MemoryFileSystem().rm("/" + self.store.url.split("://", 1)[1], recursive=True)


CONTENDERS = (MemoryFloor, MemoryFilespool)


def run(config: Any, log: Any) -> dict[str, Any]:
    count = config.messages
    messages = payloads(count)
    samples = {c: Samples() for c in CONTENDERS}
    ratios = {c: Samples() for c in CONTENDERS}
    for repetition in range(config.repeat):
        this_round = {}
        for contender_class in rotate(CONTENDERS, repetition):
            contender = contender_class()
            try:
                deliver_seconds, _ = timed(partial(contender.deliver_all, messages))
                claim_seconds, found = timed(contender.claim_all)
            finally:
                contender.close()
            problem = check_exactly_once(found, count)
            if problem:
                raise AssertionError(f"{contender_class.name}: {problem}")
            rates = {
                "deliver": count / deliver_seconds,
                "claim": count / claim_seconds,
                "round trip": count / (deliver_seconds + claim_seconds),
            }
            this_round[contender_class] = rates
            for phase, rate in rates.items():
                samples[contender_class].add(phase, rate)
            log(
                f"  memory rep {repetition + 1}/{config.repeat} {contender_class.name:28} "
                f"round trip {rates['round trip']:9.0f} msg/s"
            )
        for contender_class, rates in this_round.items():
            for phase in PHASES:
                ratios[contender_class].add(phase, rates[phase] / this_round[MemoryFloor][phase])
    rows = [
        {
            "section": "memory",
            "place": "memory",
            "mode": "-",
            "contender": c.name,
            "note": c.note,
            "messages": count,
            "repeat": config.repeat,
            "msg_per_s": {phase: samples[c].median(phase) for phase in PHASES},
            "vs_floor": {phase: ratios[c].median(phase) for phase in PHASES},
            "samples": samples[c].values,
        }
        for c in CONTENDERS
    ]
    return {"rows": rows}


def summarize(result: dict[str, Any]) -> list[str]:
    header = (
        f"{'contender':30} {'N':>6} {'deliver/s':>10} {'claim/s':>9} {'round/s':>9} {'vs floor':>8}"
    )
    lines = [header, "-" * len(header)]
    for row in result["rows"]:
        rates = row["msg_per_s"]
        lines.append(
            f"{row['contender']:30} {row['messages']:>6} {rates['deliver']:>10.0f} "
            f"{rates['claim']:>9.0f} {rates['round trip']:>9.0f} "
            f"{row['vs_floor']['round trip']:>8.0%}"
        )
    return lines
