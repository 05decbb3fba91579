"""Section ``local``: the round-trip workload on the project's disk and on tmpfs.

For each place (disk, tmpfs) and durability mode, every contender of that mode
runs the same workload in a fresh directory, interleaved: repetition r runs
the contenders in an order rotated by r. Ratios to the floor are taken within
each repetition (same minute, same machine load), then the median is reported, with
the range of the ratios; the ratio of process CPU time (steadier than wall time when
other tenants load the machine) stands beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common import (
    Place,
    check_exactly_once,
    interleaved,
    measure_round_trip,
    payloads,
    remove_tree,
    round_trip_row,
    table,
)
from contenders import DURABLE, FAST, LOCAL_CONTENDERS, Contender, Floor, available


def run_workload(
    contender_class: type[Contender], place: Place, durable: bool, messages: Sequence[bytes]
) -> dict[str, float]:
    """One run of one contender: messages per second for each phase."""
    directory = place.fresh(contender_class.__name__.lower())
    try:
        contender = contender_class(directory, durable)
        try:
            rates, found = measure_round_trip(contender, messages)
        finally:
            contender.close()
    finally:
        remove_tree(directory)
    problem = check_exactly_once(found, len(messages))
    if problem:
        raise AssertionError(f"{contender_class.name} on {place.kind}: {problem}")
    return rates


def measure_group(
    contenders: Sequence[type[Contender]],
    place: Place,
    durable: bool,
    count: int,
    repeat: int,
    log: Any,
) -> list[dict[str, Any]]:
    """Interleaved repetitions of ``contenders`` (the first must be the floor)."""
    assert contenders[0].is_floor
    messages = payloads(count)
    counts = {c: min(count, c.max_messages or count) for c in contenders}
    mode = DURABLE if durable else FAST
    samples, ratios = interleaved(
        contenders,
        repeat,
        lambda c: run_workload(c, place, durable, messages[: counts[c]]),
        log,
        f"{place.kind:5} {mode:7}",
    )
    return [
        round_trip_row(
            c,
            samples,
            ratios,
            section="local",
            place=place.kind,
            mode=mode,
            messages=counts[c],
            repeat=repeat,
        )
        for c in contenders
    ]


def run(config: Any, log: Any) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    skipped = {}
    for contender in LOCAL_CONTENDERS:
        reason = available(contender)
        if reason:
            skipped[contender.name] = reason
    for place in config.places:
        for mode in (FAST, DURABLE):
            durable = mode == DURABLE
            group = [c for c in LOCAL_CONTENDERS if mode in c.modes and c.name not in skipped]
            group.sort(key=lambda c: c is not Floor)  # the floor first
            count = config.messages_for(place.kind, durable)
            rows.extend(measure_group(group, place, durable, count, config.repeat, log))
    return {"rows": rows, "skipped": skipped}


ROUND_TRIP_COLUMNS = [
    ("deliver/s", ">10.0f", lambda row: row["msg_per_s"]["deliver"]),
    ("claim/s", ">9.0f", lambda row: row["msg_per_s"]["claim"]),
    ("round/s", ">9.0f", lambda row: row["msg_per_s"]["round trip"]),
    ("vs floor", ">8.0%", lambda row: row["vs_floor"]["round trip"]),
    ("range", ">9", lambda row: "{:.0%}-{:.0%}".format(*row["vs_floor_range"]["round trip"])),
    ("CPU vs floor", ">12.0%", lambda row: row["vs_floor"]["round trip CPU"]),
]
"""The columns of a round-trip table after the contender's name and N."""


def summarize(result: dict[str, Any]) -> list[str]:
    lines = table(
        [
            ("place", "5", lambda row: row["place"]),
            ("mode", "7", lambda row: row["mode"]),
            ("contender", "30", lambda row: row["contender"]),
            ("N", ">6", lambda row: row["messages"]),
            *ROUND_TRIP_COLUMNS,
        ],
        result["rows"],
    )
    for name, reason in result["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    return lines


__all__ = ["ROUND_TRIP_COLUMNS", "run", "summarize"]
