"""Section ``concurrency``: 1, 2, 4, 8 consumer processes draining one spool.

The spool is filled with N files (setup, not measured). The consumers are
forked, meet at a barrier, then each claims, reads and acks until ``claim()``
finds nothing. Total throughput = N / (last finish - first start). Lost races
are counted in the bench only, by a ``LocalBackend`` subclass whose ``move``
counts every ``NotFound``/``AlreadyExists`` of a new/ -> cur/ move (the
library's claim loop catches them and moves on). Each run checks that every
message was claimed exactly once and that new/ and cur/ are empty at the end.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter
from typing import Any

from common import Samples, message_index, payloads, remove_tree, table
from depth import _fill


def _counting_backend(root: str) -> Any:
    from filespool.backends.local import LocalBackend
    from filespool.errors import AlreadyExists, NotFound

    class CountingBackend(LocalBackend):
        lost = 0

        def move(
            self, source: str, name: str, destination: str, new_name: str | None = None
        ) -> None:
            try:
                super().move(source, name, destination, new_name)
            except (NotFound, AlreadyExists):
                if source == "new" and destination == "cur":
                    self.lost += 1
                raise

    return CountingBackend(root)


def _consumer(root: str, barrier: Any, results: Any) -> None:
    from filespool import FileStore

    backend = _counting_backend(root)
    store = FileStore(backend, durable=False)
    found = []
    barrier.wait()
    start = time.perf_counter()
    while (claimed := store.claim()) is not None:
        found.append(message_index(claimed.read()))
        claimed.ack()
    end = time.perf_counter()
    results.put((found, backend.lost, start, end))


def drain(root: str, consumers: int) -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(consumers)
    results = context.Queue()
    processes = [
        context.Process(target=_consumer, args=(root, barrier, results)) for _ in range(consumers)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get() for _ in processes]
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"a consumer exited with {process.exitcode}")
    claimed = [index for found, _, _, _ in outcomes for index in found]
    start = min(outcome[2] for outcome in outcomes)
    end = max(outcome[3] for outcome in outcomes)
    return {
        "claimed": claimed,
        "lost_races": sum(outcome[1] for outcome in outcomes),
        "per_consumer": [len(outcome[0]) for outcome in outcomes],
        "seconds": end - start,
    }


def run(config: Any, log: Any) -> dict[str, Any]:
    from filespool import FileStore

    rows = []
    for place in config.places:
        count = config.concurrency_messages_for(place.kind)
        messages = payloads(count)  # message i carries index i: exactly-once is checked per message
        samples = {k: Samples() for k in config.consumers}
        ratios = {k: Samples() for k in config.consumers}
        exactly_once = dict.fromkeys(config.consumers, True)
        for repetition in range(config.repeat):
            this_round = {}
            order = config.consumers if repetition % 2 == 0 else config.consumers[::-1]
            for consumers in order:
                directory = place.fresh(f"conc{consumers}")
                try:
                    FileStore(directory, durable=False).prepare()
                    _fill(os.path.join(directory, "new"), count, 0, messages)
                    outcome = drain(directory, consumers)
                    leftovers = os.listdir(os.path.join(directory, "new")) + os.listdir(
                        os.path.join(directory, "cur")
                    )
                finally:
                    remove_tree(directory)
                ok = len(outcome["claimed"]) == count and not leftovers
                ok = ok and Counter(outcome["claimed"]) == Counter(range(count))
                exactly_once[consumers] = exactly_once[consumers] and ok
                rate = count / outcome["seconds"]
                this_round[consumers] = rate
                samples[consumers].add("total", rate)
                samples[consumers].add("lost_races", outcome["lost_races"])
                log(
                    f"  concurrency {place.kind} {consumers} consumer(s) rep {repetition + 1}/"
                    f"{config.repeat}: {rate:8.0f} msg/s, {outcome['lost_races']} lost races, "
                    f"split {outcome['per_consumer']}, exactly once: {ok}"
                )
            for consumers, rate in this_round.items():
                ratios[consumers].add("total", rate / this_round[config.consumers[0]])
        for consumers in config.consumers:
            rows.append(
                {
                    "section": "concurrency",
                    "place": place.kind,
                    "consumers": consumers,
                    "messages": count,
                    "repeat": config.repeat,
                    "msg_per_s": samples[consumers].median("total"),
                    "vs_one": ratios[consumers].median("total"),
                    "min_vs_one": min(ratios[consumers].values["total"]),
                    "lost_races": samples[consumers].median("lost_races"),
                    "lost_races_max": max(samples[consumers].values["lost_races"]),
                    "exactly_once": exactly_once[consumers],
                    "samples": samples[consumers].values,
                }
            )
    return {"rows": rows}


def summarize(result: dict[str, Any]) -> list[str]:
    return table(
        [
            ("place", "5", lambda row: row["place"]),
            ("consumers", ">9", lambda row: row["consumers"]),
            ("N", ">6", lambda row: row["messages"]),
            ("total msg/s", ">11.0f", lambda row: row["msg_per_s"]),
            ("vs 1", ">6.0%", lambda row: row["vs_one"]),
            ("worst vs 1", ">10.0%", lambda row: row["min_vs_one"]),
            ("lost races", ">10.0f", lambda row: row["lost_races"]),
            ("max lost", ">8.0f", lambda row: row["lost_races_max"]),
            ("exactly once", ">12", lambda row: str(row["exactly_once"])),
        ],
        result["rows"],
    )
