"""Section ``azure``: claimers draining one spool on Azurite, as the ``s3`` section does.

Azurite (the Azure Storage emulator, Node.js) runs as a child on a loopback port when
``FILESPOOL_AZURITE`` names its npm install (``nox -s bench`` installs it, as
``nox -s azure`` does); otherwise the section is skipped, and says so. A spool is
filled with M messages, then K claimer threads (1, 4, 16), each with its own store and
client, claim, read and ack until ``claim()`` finds nothing. Total throughput is
M / (last finish - first start), compared with 1 claimer of the same repetition.
Every run checks that each message was claimed exactly once and that nothing is left.
Requests per message are asserted by the tests (tests/azure) and stated in
docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import Samples, check_exactly_once, payloads, table

# The launcher is the tests' own (tests/azure), and takes free_port from tests/s3_launch.
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "azure")
)
from azurite_launch import azurite, connection_string

AZURITE_ENV = "FILESPOOL_AZURITE"


def run(config: Any, log: Callable[[str], None]) -> dict[str, Any]:
    result: dict[str, Any] = {"rows": [], "server": ""}
    installed = os.environ.get(AZURITE_ENV)
    if importlib.util.find_spec("azure.storage.blob") is None:
        result["server"] = "skipped: azure-storage-blob is not installed (filespool[azure])"
        return result
    if not installed:
        result["server"] = f"skipped: {AZURITE_ENV} is not set (nox -s bench sets it)"
        return result
    with contextlib.ExitStack() as stack:
        try:
            endpoint = stack.enter_context(azurite(installed))
        except (OSError, RuntimeError, TimeoutError) as error:
            result["server"] = f"FAILED to start Azurite: {error}"
            return result
        result["server"] = f"Azurite from {installed}"
        result["rows"] = _throughput(endpoint, config, log)
    return result


def _throughput(endpoint: str, config: Any, log: Callable[[str], None]) -> list[dict[str, Any]]:
    counts = config.s3_claimers
    samples = {k: Samples() for k in counts}
    problems: list[str] = []
    for repetition in range(config.repeat):
        rates = {}
        for claimers in counts if repetition % 2 == 0 else counts[::-1]:
            outcome = _drain(endpoint, config.s3_drain_messages, claimers)
            rates[claimers] = outcome["rate"]
            samples[claimers].add("rate", outcome["rate"])
            if outcome["problem"]:
                problems.append(f"{claimers} claimers: {outcome['problem']}")
            log(
                f"  azure {claimers:2} claimer(s) rep {repetition + 1}/{config.repeat}: "
                f"{outcome['rate']:6.1f} msg/s, split {outcome['split']}, "
                f"exactly once: {outcome['problem'] or 'yes'}"
            )
        for claimers, rate in rates.items():
            samples[claimers].add("vs_one", rate / rates[counts[0]])
    return [
        {
            "claimers": claimers,
            "messages": config.s3_drain_messages,
            "msg_per_s": samples[claimers].median("rate"),
            "vs_one": samples[claimers].median("vs_one"),
            "min_vs_one": min(samples[claimers].values["vs_one"]),
            "exactly_once": not problems,
            "problems": problems,
            "samples": samples[claimers].values,
        }
        for claimers in counts
    ]


def _store(endpoint: str, container: str) -> Any:
    from filespool import FileStore

    return FileStore(f"az://{container}/spool", connection_string=connection_string(endpoint))


def _drain(endpoint: str, messages: int, claimers: int) -> dict[str, Any]:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(connection_string(endpoint))
    container = f"fsbench-{time.monotonic_ns()}"
    service.create_container(container)
    try:
        store = _store(endpoint, container)
        store.prepare()
        store.deliver_many(payloads(messages))
        barrier = threading.Barrier(claimers)
        with ThreadPoolExecutor(claimers) as pool:
            futures = [pool.submit(_claimer, endpoint, container, barrier) for _ in range(claimers)]
            outcomes = [future.result() for future in futures]
        leftovers = store.names("new") + store.names("cur")
    finally:
        service.delete_container(container)
    problem = check_exactly_once([data for o in outcomes for data in o["found"]], messages)
    if leftovers:
        problem = f"{len(leftovers)} files left in new/ and cur/; {problem or ''}"
    seconds = max(o["end"] for o in outcomes) - min(o["start"] for o in outcomes)
    return {
        "rate": messages / seconds,
        "split": sorted(len(o["found"]) for o in outcomes),
        "problem": problem,
    }


def _claimer(endpoint: str, container: str, barrier: threading.Barrier) -> dict[str, Any]:
    """One claimer: its own store (and client), probed before the start; drains the spool."""
    try:
        store = _store(endpoint, container)
        store.backend.method  # type: ignore[attr-defined]  # noqa: B018  (the probe, untimed)
        store.names("cur")
        barrier.wait(timeout=300)
    except BaseException:
        barrier.abort()
        raise
    found = []
    start = time.perf_counter()
    while (claim := store.claim()) is not None:
        found.append(claim.read())
        claim.ack()
    return {"found": found, "start": start, "end": time.perf_counter()}


def summarize(result: dict[str, Any]) -> list[str]:
    lines = [f"Server: {result['server']}"]
    if result["rows"]:
        lines.append("Claimer threads draining one spool (medians; ratios per repetition)")
        lines += table(
            [
                ("claimers", ">8", lambda r: r["claimers"]),
                ("messages", ">8", lambda r: r["messages"]),
                ("msg/s", ">7.1f", lambda r: r["msg_per_s"]),
                ("vs one", ">6.2f", lambda r: r["vs_one"]),
                ("worst", ">6.2f", lambda r: r["min_vs_one"]),
                ("exactly once", ">12", lambda r: "yes" if r["exactly_once"] else "NO"),
            ],
            result["rows"],
        )
    return lines
