"""Section ``local``: the round-trip workload on the project's disk and on tmpfs.

For each place (disk, tmpfs) and durability mode, every contender of that mode
runs the same workload in a fresh directory, interleaved: repetition r runs
the contenders in an order rotated by r. Ratios to the floor are taken within
each repetition (same minute, same machine load), then the median is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common import Place, Samples, check_exactly_once, median, payloads, remove_tree, rotate, timed
from contenders import DURABLE, FAST, LOCAL_CONTENDERS, Contender, Floor, available

PHASES = ("deliver", "claim", "round trip")


def run_workload(
    contender_class: type[Contender], place: Place, durable: bool, messages: Sequence[bytes]
) -> dict[str, float]:
    """One run of one contender: messages per second for each phase."""
    directory = place.fresh(contender_class.__name__.lower())
    try:
        contender = contender_class(directory, durable)
        try:
            deliver_seconds, _ = timed(lambda: contender.deliver_all(messages))
            claim_seconds, found = timed(contender.claim_all)
        finally:
            contender.close()
    finally:
        remove_tree(directory)
    problem = check_exactly_once(found, len(messages))
    if problem:
        raise AssertionError(f"{contender_class.name} on {place.kind}: {problem}")
    count = len(messages)
    return {
        "deliver": count / deliver_seconds,
        "claim": count / claim_seconds,
        "round trip": count / (deliver_seconds + claim_seconds),
    }


def measure_group(
    contenders: Sequence[type[Contender]],
    place: Place,
    durable: bool,
    count: int,
    repeat: int,
    log: Any,
) -> list[dict[str, Any]]:
    """Interleaved repetitions of ``contenders`` (the first must be the floor)."""
    messages = payloads(count)
    counts = {c: min(count, c.max_messages or count) for c in contenders}
    samples = {c: Samples() for c in contenders}
    ratios = {c: Samples() for c in contenders}
    floor = contenders[0]
    assert floor.is_floor
    for repetition in range(repeat):
        this_round: dict[type[Contender], dict[str, float]] = {}
        for contender in rotate(contenders, repetition):
            rates = run_workload(contender, place, durable, messages[: counts[contender]])
            this_round[contender] = rates
            for phase, rate in rates.items():
                samples[contender].add(phase, rate)
            log(
                f"  {place.kind:5} {'durable' if durable else 'fast':7} "
                f"rep {repetition + 1}/{repeat} {contender.name:30} "
                f"round trip {rates['round trip']:9.0f} msg/s"
            )
        for contender, rates in this_round.items():
            for phase in PHASES:
                ratios[contender].add(phase, rates[phase] / this_round[floor][phase])
    rows = []
    for contender in contenders:
        rows.append(
            {
                "section": "local",
                "place": place.kind,
                "mode": DURABLE if durable else FAST,
                "contender": contender.name,
                "note": contender.note,
                "messages": counts[contender],
                "repeat": repeat,
                "msg_per_s": {phase: samples[contender].median(phase) for phase in PHASES},
                "vs_floor": {phase: ratios[contender].median(phase) for phase in PHASES},
                "samples": samples[contender].values,
            }
        )
    return rows


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


def summarize(result: dict[str, Any]) -> list[str]:
    lines = []
    header = (
        f"{'place':5} {'mode':7} {'contender':30} {'N':>6} "
        f"{'deliver/s':>10} {'claim/s':>9} {'round/s':>9} {'vs floor':>8}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for row in result["rows"]:
        rates = row["msg_per_s"]
        lines.append(
            f"{row['place']:5} {row['mode']:7} {row['contender']:30} {row['messages']:>6} "
            f"{rates['deliver']:>10.0f} {rates['claim']:>9.0f} {rates['round trip']:>9.0f} "
            f"{row['vs_floor']['round trip']:>8.0%}"
        )
    for name, reason in result["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    return lines


__all__ = ["median", "run", "summarize"]
