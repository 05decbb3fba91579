"""Worker processes for the crash tests: run as ``python workers.py MODE URL LOG``.

Each appends what it does to LOG, one line at a time, flushed, so that a test
can compare what workers did with what is left in the store after SIGKILL.
"""

from __future__ import annotations

import random
import sys
import time

from filespool import FileStore, LeaseLost


def consume(store: FileStore, log: object) -> None:
    """Claim, process (log ``P``, then 5 ms of work), ack (log ``A``): the ordinary worker.

    The work paces the drain, so the test can kill consumers every 500 messages."""
    while True:
        claim = store.claim(wait=0.5)
        if claim is None:
            continue
        _write(log, f"P {claim}")
        time.sleep(0.005)
        claim.ack()
        _write(log, f"A {claim}")


def churn(store: FileStore, log: object) -> None:
    """Claim and finish each file at random: release, fail, extend or ack (logged first)."""
    while True:
        claim = store.claim(wait=0.5)
        if claim is None:
            continue
        action = random.choice(["release", "release", "fail", "extend", "ack"])
        if action == "ack":
            _write(log, f"A {claim}")  # intent, before: a kill may fall between ack and log
        try:
            if action == "release":
                claim.release()
            elif action == "fail":
                claim.fail("churned")
            elif action == "extend":
                claim.extend()
            else:
                claim.ack()
        except LeaseLost:
            pass  # the recover worker took the claim back first: expected, the lease is 0 s


def recover(store: FileStore, log: object) -> None:
    """Give back every claim, as fast as possible."""
    while True:
        store.recover(older_than=0)


def _write(log: object, line: str) -> None:
    log.write(line + "\n")  # type: ignore[attr-defined]
    log.flush()  # type: ignore[attr-defined]


if __name__ == "__main__":
    mode, url, log_path = sys.argv[1:4]
    spool = FileStore(url, durable=False, max_attempts=None)
    with open(log_path, "a") as log_file:
        _write(log_file, "R ready")  # started: the test kills it only from now on
        {"consume": consume, "churn": churn, "recover": recover}[mode](spool, log_file)
