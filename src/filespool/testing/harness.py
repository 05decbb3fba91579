"""Tools the contract's tests share: races, processes, the exactly-once check, the clock."""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType
from typing import Any

from filespool.backends.base import STAGING_FOLDER, Backend
from filespool.names import split_file_name
from filespool.store import FileStore


def race(workers: list[Callable[[], object]]) -> list[object]:
    """Run the callables in threads released together; return their results or exceptions."""
    barrier = threading.Barrier(len(workers) + 1)
    go = threading.Event()
    results: list[object] = [None] * len(workers)

    def run(index: int) -> None:
        barrier.wait()
        # Spin, runnable, until all are: a thread woken from a wait starts microseconds
        # after the others, long after a short operation of theirs has finished.
        while not go.is_set():
            pass
        try:
            results[index] = workers[index]()
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    # Under the GIL a short check-then-act (a dict lookup, then a store) is almost never
    # split by a thread switch, so a missing lock would pass by luck. Racing threads
    # therefore pause at every Python call they make, letting the others run, and switch
    # every microsecond besides.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    threading.setprofile(_yield_at_calls)  # read by each thread as it starts
    try:
        for thread in threads:
            thread.start()
        barrier.wait()  # every thread has started, and read the hook
        threading.setprofile(None)
        go.set()
        for thread in threads:
            thread.join()
    finally:
        threading.setprofile(None)
        sys.setswitchinterval(interval)
    return results


def _yield_at_calls(frame: FrameType, event: str, argument: object) -> None:
    if event == "call":
        # Blocks for a moment (sleep(0) may take the GIL straight back): another racing
        # thread runs meanwhile.
        time.sleep(1e-5)


def wait_for_storage_time_after(backend: Backend, moment: float) -> None:
    """Return once the storage's own clock (the `changed` time of a file written now) is
    past `moment`: whatever the storage's time resolution, a file written or moved from
    now on has a later time than any file stamped up to `moment`."""
    while True:
        probe = f".clock-{uuid.uuid4().hex}"
        backend.put(STAGING_FOLDER, probe, b"", durable=False)
        try:
            if backend.info(STAGING_FOLDER, probe).changed > moment:
                return
        finally:
            backend.remove(STAGING_FOLDER, probe)


def claim_in_processes(store: FileStore, processes: int) -> list[str]:
    """Drain `new/` with several processes claiming at once; return every name claimed."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(target=_claim_until_empty, args=(store, barrier, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    claimed: list[str] = []
    for _ in workers:
        claimed.extend(results.get(timeout=600))
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0
    return claimed


def _claim_until_empty(store: FileStore, barrier: Any, results: Any) -> None:
    barrier.wait()
    claimed = []
    while (name := store.claim()) is not None:
        claimed.append(name)
    results.put(claimed)


def drain(store: FileStore, expect: set[str] | None = None, context: str = "") -> None:
    """Empty the store; with `expect`, check that exactly those messages were still in it
    (each once, whatever generation it is in now)."""
    store.recover(older_than=0)
    left: list[str] = []
    for folder in ("new", "failed"):
        for name in store.names(folder):
            left.append(split_file_name(name)[0])
            store.remove(name, folder)
    assert store.names("cur") == [], context
    if expect is not None:
        assert sorted(left) == sorted(expect), context
