"""The demo behind `filespool demo`, and the exactly-once check it (and the benchmarks)
make: producers deliver while consumers claim, read and ack, and every delivered message
must have been claimed exactly once."""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from filespool.store import FOLDERS, FileStore


@dataclass
class ExactlyOnce:
    """What a run delivered and claimed, and whether each message was claimed once."""

    delivered: list[str]
    claimed: list[str]
    seconds: float = 0.0
    left_over: int = 0
    """Files still in the store afterwards."""

    @property
    def duplicates(self) -> int:
        """Claims beyond the first of a message."""
        return sum(count - 1 for count in Counter(self.claimed).values())

    @property
    def lost(self) -> int:
        """Delivered messages nobody claimed."""
        return len(set(self.delivered) - set(self.claimed))

    @property
    def holds(self) -> bool:
        """Every delivered message claimed once, nothing else claimed, nothing left."""
        return self.problem() is None

    def problem(self) -> str | None:
        """What is wrong, in words (`2 lost, 1 claimed twice`), or None if nothing is."""
        claims, deliveries = Counter(self.claimed), Counter(self.delivered)
        problems = [
            f"{self.lost} lost" if self.lost else "",
            f"{self.duplicates} claimed twice" if self.duplicates else "",
            f"{len(claims.keys() - deliveries.keys())} claimed but never delivered"
            if claims.keys() - deliveries.keys()
            else "",
            f"{len(self.delivered) - len(deliveries)} delivered twice"
            if len(deliveries) != len(self.delivered)
            else "",
            f"{self.left_over} left in the store" if self.left_over else "",
        ]
        return ", ".join(problem for problem in problems if problem) or None


def run_demo(
    store: FileStore,
    messages: int,
    producers: int,
    consumers: int,
    size: int,
    *,
    threads: bool = False,
) -> ExactlyOnce:
    """Deliver `messages` with producers while consumers drain the store: processes, or
    threads of this process (`threads`, for storage one process holds, as `memory://`)."""
    if threads:
        results: Any = queue.Queue()
        producing: Any = threading.Event()
        start: Callable[..., Any] = threading.Thread
    else:
        context = multiprocessing.get_context("spawn")
        results, producing, start = context.Queue(), context.Event(), context.Process
    shares = [messages // producers + (i < messages % producers) for i in range(producers)]
    workers = [start(target=_produce, args=(store, share, size, results)) for share in shares]
    workers += [start(target=_consume, args=(store, producing, results)) for _ in range(consumers)]
    producing.set()
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    delivered: list[str] = []
    for _ in range(producers):
        delivered.extend(_result(results, workers))
    producing.clear()
    claimed: list[str] = []
    for _ in range(consumers):
        claimed.extend(_result(results, workers))
    seconds = time.perf_counter() - started
    for worker in workers:
        worker.join()
    left_over = sum(len(store.names(folder)) for folder in FOLDERS)
    return ExactlyOnce(delivered, claimed, seconds, left_over)


def _result(results: Any, workers: list[Any]) -> list[str]:
    """The next worker's result; raises if workers died without one (no endless wait)."""
    while True:
        try:
            found: list[str] = results.get(timeout=1)
        except queue.Empty:
            failed = any(getattr(worker, "exitcode", None) not in (0, None) for worker in workers)
            if failed or not any(worker.is_alive() for worker in workers):
                raise RuntimeError("a demo worker died; see its traceback above") from None
            continue
        return found


def _produce(store: FileStore, count: int, size: int, results: Any) -> None:
    payload = b"m" * size
    results.put([store.deliver(payload) for _ in range(count)])


def _consume(store: FileStore, producing: Any, results: Any) -> None:
    claimed: list[str] = []
    while True:
        # Read before claiming: nothing to claim after the producers finished means drained.
        finished = not producing.is_set()
        claim = store.claim(wait=None if finished else 0.05)
        if claim is None:
            if finished:
                break
            continue
        claim.read()
        claim.ack()
        claimed.append(claim.name)
    results.put(claimed)
