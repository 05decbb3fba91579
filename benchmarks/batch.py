"""Section ``batch``: durable delivery in batches against the per-message durable floor.

Contenders deliver the same 1 KiB messages durably into a fresh spool, interleaved
(repetition r rotates their order): the floor's per-message system calls with the
directory fsync filespool also makes (the floor that does the same flushes),
``FileStore.deliver`` one message at a time, and ``FileStore.deliver_many`` in
batches of ``BATCH``. Rates are deliveries per second, wall time, with process CPU
time beside it; ratios are to the floor of the same repetition. Every message is then
claimed and read once, to check that each arrived whole.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from common import Place, Samples, check_exactly_once, payloads, remove_tree, rotate, table
from contenders import Filespool, FloorDirectorySync

BATCH = 100


class PerMessage(Filespool):
    name = "filespool deliver"
    note = "FileStore.deliver, durable, one at a time"


class Batches(Filespool):
    name = f"filespool deliver_many ({BATCH})"
    note = f"FileStore.deliver_many, durable, {BATCH} per batch"

    def deliver_all(self, messages: Sequence[bytes]) -> None:
        for start in range(0, len(messages), BATCH):
            self.store.deliver_many(messages[start : start + BATCH])


CONTENDERS = (FloorDirectorySync, PerMessage, Batches)


def run(config: Any, log: Any) -> dict[str, Any]:
    rows = []
    for place in config.places:
        count = config.messages_for(place.kind, durable=True)
        messages = payloads(count)
        samples = {c: Samples() for c in CONTENDERS}
        for repetition in range(config.repeat):
            rates: dict[Any, dict[str, float]] = {}
            for contender in rotate(CONTENDERS, repetition):
                rates[contender] = _deliver(contender, place, messages)
                log(
                    f"  batch {place.kind} rep {repetition + 1}/{config.repeat} "
                    f"{contender.name:32} {rates[contender]['wall']:9.0f} msg/s"
                )
            for contender, rate in rates.items():
                for clock in ("wall", "cpu"):
                    samples[contender].add(clock, rate[clock])
                    samples[contender].add(
                        f"{clock} vs floor", rate[clock] / rates[FloorDirectorySync][clock]
                    )
        for contender in CONTENDERS:
            rows.append(
                {
                    "place": place.kind,
                    "contender": contender.name,
                    "note": contender.note,
                    "messages": count,
                    **{metric: samples[contender].median(metric) for metric in _METRICS},
                    "samples": samples[contender].values,
                }
            )
    return {"batch": BATCH, "rows": rows}


_METRICS = ("wall", "cpu", "wall vs floor", "cpu vs floor")


def _deliver(contender: Any, place: Place, messages: Sequence[bytes]) -> dict[str, float]:
    directory = place.fresh("batch")
    try:
        instance = contender(directory, durable=True)
        wall, cpu = time.perf_counter(), time.process_time()
        instance.deliver_all(messages)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        problem = check_exactly_once(instance.claim_all(), len(messages))
        instance.close()
        if problem:
            raise AssertionError(f"{contender.name}: {problem}")
    finally:
        remove_tree(directory)
    return {"wall": len(messages) / wall, "cpu": len(messages) / max(cpu, 1e-9)}


def summarize(result: dict[str, Any]) -> list[str]:
    columns = [
        ("place", "<6", lambda r: r["place"]),
        ("contender", "<32", lambda r: r["contender"]),
        ("msg/s", ">9.0f", lambda r: r["wall"]),
        ("vs floor", ">8.2f", lambda r: r["wall vs floor"]),
        ("msg/CPU-s", ">10.0f", lambda r: r["cpu"]),
        ("CPU vs floor", ">12.2f", lambda r: r["cpu vs floor"]),
    ]
    lines = [f"Durable delivery, {result['batch']} per batch (medians; ratios per repetition)"]
    return lines + table(columns, result["rows"])
