"""Section ``depth``: claim+ack throughput with few vs many files waiting in new/.

For each depth D, a spool is filled with D files (written straight into new/
with plain system calls, under filespool-style names: setup, not measured).
Each repetition starts a fresh consumer (a new ``FileStore``, as a restarted
worker would be) that claims, reads and acks ``claims`` files; then the spool
is topped up to D again. Reported: the throughput of those claims including
the consumer's first listing of new/ (the figure the target is checked
on), the throughput after the first claim (steady state), the time one
``names('new')`` listing takes at that depth, and the peak of the Python memory
allocated while a fresh consumer makes its claims (traced with tracemalloc in one
more, untimed pass): a claimer holds one page of names, whatever the depth.
Beside them, the floor: the same claims as bare system calls (names from one page of a
listing, not timed), which shows what the filesystem itself makes of the depth.
"""

from __future__ import annotations

import itertools
import os
import time
import tracemalloc
from typing import Any

from common import Samples, payloads, quiet_gc, remove_tree, table
from contenders import claim_each

PAGE = 4096  # names a claimer reads from a listing at a time, as filespool does


def _fill(new: str, count: int, start: int, messages: list[bytes]) -> int:
    from filespool.names import unique_name

    for index in range(start, start + count):
        descriptor = os.open(f"{new}/{unique_name()}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(descriptor, messages[index % len(messages)])
        os.close(descriptor)
    return start + count


def _measure(directory: str, claims: int) -> tuple[float, float, float, list[str]]:
    from filespool import FileStore

    store = FileStore(directory, durable=False)
    found = []
    with quiet_gc():
        start = time.perf_counter()
        claimed = store.claim()
        first = time.perf_counter()
        while claimed is not None:
            claimed.read()
            found.append(claimed.name)
            claimed.ack()
            if len(found) == claims:
                break
            claimed = store.claim()
        end = time.perf_counter()
    return start, first, end, found


def _measure_floor(directory: str, claims: int) -> float:
    """The floor's claims per second at this depth: the system calls of a claim, read and
    ack (`renameat2(RENAME_NOREPLACE)` to cur/, open, read, close, unlink) of names taken
    from one page of a listing, which is not timed."""
    new, cur = os.fsencode(directory) + b"/new/", os.fsencode(directory) + b"/cur/"
    with os.scandir(new) as listing:
        names = sorted(entry.name for entry in itertools.islice(listing, PAGE))[:claims]
    with quiet_gc():
        start = time.perf_counter()
        claim_each(new, cur, names)
        return len(names) / (time.perf_counter() - start)


def run(config: Any, log: Any) -> dict[str, Any]:
    from filespool import FileStore

    rows = []
    messages = payloads(1000)
    for place in config.places:
        for depth in config.depths:
            claims = min(config.depth_claims, depth)
            directory = place.fresh(f"depth{depth}")
            try:
                store = FileStore(directory, durable=False)
                store.prepare()
                new = os.path.join(directory, "new")
                setup = time.perf_counter()
                serial = _fill(new, depth, 0, messages)
                log(f"  depth {place.kind} {depth}: filled in {time.perf_counter() - setup:.1f} s")
                samples = Samples()
                for repetition in range(config.repeat):
                    with quiet_gc():
                        started = time.perf_counter()
                        store.names("new")
                        samples.add("listing_s", time.perf_counter() - started)
                    start, first, end, found = _measure(directory, claims)
                    if len(found) != claims or len(set(found)) != len(found):
                        raise AssertionError(
                            f"depth {depth}: {len(found)} claims, "
                            f"{len(set(found))} distinct, {claims} wanted"
                        )
                    samples.add("claim", claims / (end - start))
                    if claims > 1:
                        samples.add("steady", (claims - 1) / (end - first))
                    samples.add("first_claim_s", first - start)
                    log(
                        f"  depth {place.kind} {depth:>7} rep {repetition + 1}/{config.repeat}: "
                        f"{samples.values['claim'][-1]:8.0f} claims/s "
                        f"(first claim {first - start:.3f} s)"
                    )
                    serial = _fill(new, claims, serial, messages)  # back to depth D
                    samples.add("floor", _measure_floor(directory, claims))
                    serial = _fill(new, claims, serial, messages)
                tracemalloc.start()
                _measure(directory, claims)
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                serial = _fill(new, claims, serial, messages)
            finally:
                remove_tree(directory)
            rows.append(
                {
                    "section": "depth",
                    "place": place.kind,
                    "depth": depth,
                    "claims": claims,
                    "repeat": config.repeat,
                    "claim_per_s": samples.median("claim"),
                    "steady_claim_per_s": samples.median("steady"),
                    "floor_claim_per_s": samples.median("floor"),
                    "first_claim_s": samples.median("first_claim_s"),
                    "listing_s": samples.median("listing_s"),
                    "claim_peak_mib": peak / 2**20,
                    "samples": samples.values,
                }
            )
    for row in rows:
        shallow = [
            r for r in rows if r["place"] == row["place"] and r["depth"] == min(config.depths)
        ]
        row["vs_shallowest"] = row["claim_per_s"] / shallow[0]["claim_per_s"]
        row["steady_vs_shallowest"] = row["steady_claim_per_s"] / shallow[0]["steady_claim_per_s"]
        row["floor_vs_shallowest"] = row["floor_claim_per_s"] / shallow[0]["floor_claim_per_s"]
    return {"rows": rows}


def summarize(result: dict[str, Any]) -> list[str]:
    return table(
        [
            ("place", "5", lambda row: row["place"]),
            ("depth", ">7", lambda row: row["depth"]),
            ("claims", ">6", lambda row: row["claims"]),
            ("claim+ack/s", ">11.0f", lambda row: row["claim_per_s"]),
            ("vs shallow", ">10.0%", lambda row: row["vs_shallowest"]),
            ("steady/s", ">9.0f", lambda row: row["steady_claim_per_s"]),
            ("vs shallow", ">10.0%", lambda row: row["steady_vs_shallowest"]),
            ("floor/s", ">8.0f", lambda row: row["floor_claim_per_s"]),
            ("vs shallow", ">10.0%", lambda row: row["floor_vs_shallowest"]),
            ("1st claim s", ">11.3f", lambda row: row["first_claim_s"]),
            ("listing s", ">9.3f", lambda row: row["listing_s"]),
            ("peak MiB", ">8.2f", lambda row: row["claim_peak_mib"]),
        ],
        result["rows"],
    )


__all__ = ["remove_tree", "run", "summarize"]
