"""Section ``s3latency``: S3 as a worker in the cloud sees it, latency-bound.

LocalStack (a child process, as in the ``s3`` section) sits behind a loopback proxy
that delays every request by a fixed latency (tests/latency_proxy.py, its own
process); moto is left out, since it serves one connection at a time and no request
could overlap another. Each latency (0 and 20 ms) gets:

Batches against one request at a time, in one process. The same store delivers N
messages one by one, then with ``deliver_many`` (batches of ``BATCH``); claims, reads and
acks them one by one, then with ``claim_many``/``read_many``/``ack_many``; then the
same batches through ``filespool.aio`` (requests on the caller's loop, as an asyncio
service would make them); the order of the three modes
rotates between repetitions. Reported: messages per second (wall), the client's CPU time per
message, the servers' (LocalStack's and the proxy's, from /proc: on this machine they
share the client's cores), and HTTP requests per message in each mode (a batch must add
none).

Claimer processes. M messages are put in one spool, then K processes (1, 4, 16),
each with its own store, started and probed before a shared start signal, claim and
ack until ``claim()`` finds nothing. Total rate = messages / (last finish - first
start); one claimer drains ``single_messages`` (fewer: at 20 ms it claims about six a
second, and its rate does not depend on depth). A lost race is a move new/ -> cur/
refused because another claimer moved the file first; reported as a share of claims.
Every run checks that each message was claimed exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common import Samples, check_exactly_once, payloads, table
from s3 import CREDENTIALS, LOCALSTACK_ENV, RequestTally, _counting_class, fresh_store

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)
from latency_proxy import latency_proxy
from s3_launch import localstack

BATCH = 128  # twice S3's default window: it stays full while a batch's last requests end
LATENCIES = (0.0, 0.02)
MODES = ("one at a time", "batched", "asyncio")


def run(config: Any, log: Callable[[str], None]) -> dict[str, Any]:
    result: dict[str, Any] = {"batches": [], "claimers": [], "server": "", "batch": BATCH}
    python = config.localstack_python
    if not python:
        result["server"] = f"skipped: {LOCALSTACK_ENV} is not set (nox -s bench sets it)"
        return result
    with contextlib.ExitStack() as stack:
        try:
            direct = stack.enter_context(localstack(python))
        except (OSError, RuntimeError, TimeoutError) as error:
            result["server"] = f"FAILED to start LocalStack: {error}"
            return result
        result["server"] = f"LocalStack ({python}) behind a latency proxy"
        for latency in LATENCIES:
            with latency_proxy(direct, latency) as proxied:
                result["batches"].extend(_batches(direct, proxied, latency, config, log))
                if latency:
                    result["claimers"].extend(_claimers(direct, proxied, latency, config, log))
    return result


# -- batches against one at a time --------------------------------------------------------------


def _batches(
    direct: str, proxied: str, latency: float, config: Any, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    count = config.s3_latency_messages
    samples = {(step, mode): Samples() for step in ("deliver", "claim+ack") for mode in MODES}
    with fresh_store(direct) as made:
        from filespool import FileStore
        from filespool.backends.s3 import S3Backend

        template = made.backend
        backend = S3Backend(template.bucket, template.prefix, **_options(proxied))
        store = FileStore(backend)
        store.deliver(b"warm-up")  # the probe and the folder markers: once per store
        store.claim().ack()  # type: ignore[union-attr]
        tally = RequestTally(backend)
        for repetition in range(config.repeat):
            order = MODES[repetition % len(MODES) :] + MODES[: repetition % len(MODES)]
            for mode in order:
                run_round = _async_round if mode == "asyncio" else _round
                for step, figures in run_round(store, tally, mode, count).items():
                    for metric, value in figures.items():
                        samples[step, mode].add(metric, value)
        for step in ("deliver", "claim+ack"):
            for mode in MODES:
                log(
                    f"  s3latency {latency * 1000:.0f} ms {step} {mode}: "
                    f"{samples[step, mode].values['rate']}"
                )
    rows = []
    for step in ("deliver", "claim+ack"):
        one = samples[step, "one at a time"]
        for mode in MODES:
            mine = samples[step, mode]
            rows.append(
                {
                    "latency_ms": latency * 1000,
                    "step": step,
                    "mode": mode,
                    "messages": count,
                    "msg_per_s": mine.median("rate"),
                    "vs_one_at_a_time": mine.median("rate") / one.median("rate"),
                    "cpu_ms_per_message": mine.median("cpu_ms"),
                    "server_cpu_ms_per_message": mine.median("server_cpu_ms"),
                    "requests_per_message": mine.median("requests"),
                    "samples": mine.values,
                }
            )
    return rows


def _round(store: Any, tally: Any, mode: str, count: int) -> dict[str, dict[str, float]]:
    """Deliver `count` messages, then claim and ack them all, in one mode; check them."""
    messages = payloads(count)
    figures = {}
    with _measured(tally, count) as deliver:
        if mode == "batched":
            for start in range(0, count, BATCH):
                store.deliver_many(messages[start : start + BATCH])
        else:
            for data in messages:
                store.deliver(data)
    figures["deliver"] = deliver
    found: list[bytes] = []
    with _measured(tally, count) as claim_and_ack:
        if mode == "batched":
            while claims := store.claim_many(BATCH):
                found.extend(data for _, data in store.read_many(claims))
                store.ack_many(claims)
        else:
            while (claim := store.claim()) is not None:
                found.append(claim.read())
                claim.ack()
    figures["claim+ack"] = claim_and_ack
    problem = check_exactly_once(found, count)
    if problem:
        raise AssertionError(f"s3latency {mode}: {problem}")
    return figures


def _async_round(store: Any, tally: Any, mode: str, count: int) -> dict[str, dict[str, float]]:
    """`_round`'s batches through `AsyncFileStore`, on a loop of their own."""
    from filespool.aio import AsyncFileStore

    messages = payloads(count)
    figures = {}
    found: list[bytes] = []

    async def main() -> None:
        async with AsyncFileStore(store) as spool:
            # The loop's client made, and its connections opened, outside the measurement
            # (a service's loop lives on; the other modes' pool is warm from earlier rounds).
            await spool.prepare()
            warm = await spool.deliver_many([b"."] * BATCH)
            await spool.ack_many(await spool.claim_many(len(warm)))
            tally.attach(await store.backend._client())
            with _measured(tally, count) as deliver:
                for start in range(0, count, BATCH):
                    await spool.deliver_many(messages[start : start + BATCH])
            figures["deliver"] = deliver
            with _measured(tally, count) as claim_and_ack:
                while claims := await spool.claim_many(BATCH):
                    found.extend(data for _, data in await spool.read_many(claims))
                    await spool.ack_many(claims)
            figures["claim+ack"] = claim_and_ack

    asyncio.run(main())
    problem = check_exactly_once(found, count)
    if problem:
        raise AssertionError(f"s3latency {mode}: {problem}")
    return figures


@contextlib.contextmanager
def _measured(tally: Any, count: int) -> Iterator[dict[str, float]]:
    """Fill the yielded dict with rate, CPU ms (the client's, the servers') and requests
    (reads left out) per message."""
    figures: dict[str, float] = {}
    tally.calls.clear()
    wall, cpu, server_cpu = time.perf_counter(), time.process_time(), _children_cpu()
    yield figures
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    server_cpu = _children_cpu() - server_cpu
    requests = sum(n for (_, request), n in tally.calls.items() if request != "GET")
    figures.update(
        rate=count / wall,
        cpu_ms=cpu / count * 1000,
        server_cpu_ms=server_cpu / count * 1000,
        requests=requests / count,
    )


def _children_cpu() -> float:
    """CPU seconds used so far by this process's children (LocalStack and the proxy while
    batches run), from Linux's /proc; NaN elsewhere."""
    try:
        children = [
            pid
            for task in os.listdir("/proc/self/task")
            for pid in Path(f"/proc/self/task/{task}/children").read_text().split()
        ]
    except OSError:
        return float("nan")
    ticks = 0
    for pid in children:
        with contextlib.suppress(OSError):  # a child that has just ended
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


# -- claimer processes ----------------------------------------------------------------------------


def _claimers(
    direct: str, proxied: str, latency: float, config: Any, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    samples = {k: Samples() for k in config.s3_latency_claimers}
    problems: list[str] = []
    for repetition in range(config.repeat):
        rates = {}
        counts = config.s3_latency_claimers
        for claimers in counts if repetition % 2 == 0 else counts[::-1]:
            messages = config.s3_latency_single if claimers == 1 else config.s3_latency_drain
            outcome = _drain(direct, proxied, messages, claimers)
            rates[claimers] = outcome["rate"]
            samples[claimers].add("rate", outcome["rate"])
            samples[claimers].add("lost_share", outcome["lost"] / messages)
            if outcome["problem"]:
                problems.append(f"{claimers} claimers: {outcome['problem']}")
            log(
                f"  s3latency {latency * 1000:.0f} ms {claimers:2} claimer processes "
                f"rep {repetition + 1}/{config.repeat}: {outcome['rate']:6.1f} msg/s, "
                f"{outcome['lost']} lost races in {messages} claims, split {outcome['split']}"
            )
        for claimers, rate in rates.items():
            samples[claimers].add("vs_one", rate / rates[min(rates)])
    return [
        {
            "latency_ms": latency * 1000,
            "claimers": claimers,
            "messages": (config.s3_latency_single if claimers == 1 else config.s3_latency_drain),
            "msg_per_s": samples[claimers].median("rate"),
            "vs_one": samples[claimers].median("vs_one"),
            "lost_share": samples[claimers].median("lost_share"),
            "lost_share_max": max(samples[claimers].values["lost_share"]),
            "exactly_once": not problems,
            "problems": problems,
            "samples": samples[claimers].values,
        }
        for claimers in config.s3_latency_claimers
    ]


def _drain(direct: str, proxied: str, messages: int, claimers: int) -> dict[str, Any]:
    """Fill a spool, let `claimers` processes drain it through the proxy; check exactly-once."""
    context = multiprocessing.get_context("spawn")  # no fork of s3fs's I/O thread
    with fresh_store(direct) as store:
        for start in range(0, messages, 500):
            store.deliver_many(payloads(messages)[start : start + 500])
        ready, go, results = context.Barrier(claimers + 1), context.Event(), context.Queue()
        where = (store.backend.bucket, store.backend.prefix, proxied)
        workers = [
            context.Process(target=_claimer, args=(where, ready, go, results))
            for _ in range(claimers)
        ]
        for worker in workers:
            worker.start()
        try:
            ready.wait(timeout=300)
            go.set()
            outcomes = [_outcome(results, workers) for _ in workers]
        finally:
            for worker in workers:
                worker.join(timeout=10)
                if worker.is_alive():
                    worker.kill()
        leftovers = store.names("new") + store.names("cur")
    problem = check_exactly_once([data for o in outcomes for data in o["found"]], messages)
    if leftovers:
        problem = f"{len(leftovers)} files left in new/ and cur/; {problem or ''}"
    seconds = max(o["end"] for o in outcomes) - min(o["start"] for o in outcomes)
    return {
        "rate": messages / seconds,
        "lost": sum(o["lost"] for o in outcomes),
        "split": sorted(len(o["found"]) for o in outcomes),
        "problem": problem,
    }


def _outcome(results: Any, workers: list[Any]) -> dict[str, Any]:
    """The next claimer's report; raises at once if a claimer died without one."""
    deadline = time.monotonic() + 1800
    while True:
        try:
            outcome: dict[str, Any] = results.get(timeout=1)
            return outcome
        except queue.Empty:
            dead = [worker.exitcode for worker in workers if worker.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a claimer process died (exit status {dead[0]})") from None
            if time.monotonic() > deadline:
                raise TimeoutError("the claimer processes did not finish in 30 minutes") from None


def _claimer(where: tuple[str, str, str], ready: Any, go: Any, results: Any) -> None:
    """One claimer process: probe and warm up, wait for the start, drain, report."""
    from filespool import FileStore

    bucket, prefix, endpoint = where
    backend = _counting_class()(bucket, prefix, **_options(endpoint))
    backend.method  # noqa: B018  (the probe, untimed, as a worker's first claim would make)
    store = FileStore(backend)
    store.names("cur")
    ready.wait(timeout=300)
    go.wait(timeout=300)
    found = []
    start = time.perf_counter()
    while (claim := store.claim()) is not None:
        found.append(claim.read())
        claim.ack()
    results.put({"found": found, "lost": backend.lost, "start": start, "end": time.perf_counter()})


def _options(endpoint: str) -> dict[str, Any]:
    return {"endpoint_url": endpoint, **CREDENTIALS}


# -- the summary ----------------------------------------------------------------------------------


def summarize(result: dict[str, Any]) -> list[str]:
    lines = [f"Server: {result['server']}"]
    if result["batches"]:
        lines.append(
            f"\nOne process, batches of {result['batch']} against one request at a time "
            "(medians; HTTP requests per message without the read's GET)"
        )
        lines += table(
            [
                ("latency", ">7", lambda r: f"{r['latency_ms']:.0f} ms"),
                ("step", "<9", lambda r: r["step"]),
                ("mode", "<13", lambda r: r["mode"]),
                ("msg/s", ">7.1f", lambda r: r["msg_per_s"]),
                ("vs 1 at a time", ">14.1f", lambda r: r["vs_one_at_a_time"]),
                ("CPU ms/msg", ">10.2f", lambda r: r["cpu_ms_per_message"]),
                ("servers' CPU", ">12.2f", lambda r: r.get("server_cpu_ms_per_message", 0.0)),
                ("requests/msg", ">12.2f", lambda r: r["requests_per_message"]),
            ],
            result["batches"],
        )
    if result["claimers"]:
        lines.append("\nClaimer processes draining one spool (medians over repetitions)")
        lines += table(
            [
                ("latency", ">7", lambda r: f"{r['latency_ms']:.0f} ms"),
                ("claimers", ">8", lambda r: r["claimers"]),
                ("messages", ">8", lambda r: r["messages"]),
                ("msg/s", ">7.1f", lambda r: r["msg_per_s"]),
                ("vs one", ">6.1f", lambda r: r["vs_one"]),
                ("lost races", ">10", lambda r: f"{r['lost_share']:.1%}"),
                ("worst", ">6", lambda r: f"{r['lost_share_max']:.1%}"),
            ],
            result["claimers"],
        )
    return lines
