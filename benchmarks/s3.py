"""Section ``s3``: requests per message and concurrent claimers, on moto and LocalStack.

Servers. moto's HTTP server runs in this process (a thread) and answers one request
at a time, as in the tests (tests/s3_launch.py): moto checks conditional writes without a lock,
so concurrent requests could let two claimers win one message. Its throughput ratios
therefore show the protocol's overhead under contention (lost races, extra requests),
not how a server scales. LocalStack, which enforces the conditional copy atomically,
runs as a child process when ``FILESPOOL_LOCALSTACK_PYTHON`` (or
``--localstack-python``) names the python of an environment with ``localstack-core``
(``nox -s bench`` builds one); otherwise it is skipped, and the output says so. Both
listen on 127.0.0.1 only and are stopped at the end, also on error. Every
configuration gets its own bucket, emptied and deleted afterwards.

Requests per message. One store delivers N messages, then claims, reads and acks
them one by one, after one warm-up message (the claim-method probe and the HEADs of
the folder markers come once per store handle, not per message). A botocore
``before-parameter-build`` hook counts every API call by operation, by the step that
made it (deliver, claim, read, ack) and by the folder of its key; a ``before-send``
hook counts HTTP requests, so retries show as their difference. The floor is 1 PUT
(deliver), 1 COPY + 1 DELETE (claim), 1 DELETE (ack) and a LIST per 1,000 claims.
The target (at most 4 per message plus the amortized LIST) applies to the native
conditional-copy path; the read's GET is outside the floor, and the store's look for
attempt records (a HEAD of ``.records/``, at most once a second) is shown apart.
Configurations: moto probed (it ignores the CopyObject condition, so the probe picks
the multipart fallback), moto with ``claim_method="copy"`` forced (fine for counting
with one claimer, although moto does not enforce that condition: never race it),
and LocalStack probed (the copy path, plus the HEADs its quirks cost; see docs/s3.md).

Concurrent claimers. A spool is filled with M messages (setup), then K claimers
drain it with claim, read and ack until ``claim()`` finds nothing. Claimers are
threads, each with its own ``FileStore`` and ``S3Backend`` (its own client and
connection pool; its claim method probed before the start, untimed): an S3 claimer
waits on the network nearly all the time, its requests run on fsspec's one I/O loop
thread as in any threaded worker, and on this 2-core machine 16 processes would
mostly measure interpreter start-up and scheduling. Total throughput is
M / (last finish - first start); each K is compared with 1 claimer of the same
repetition, and the median of those ratios is reported. Each run checks that every
message was claimed exactly once and that new/ and cur/ are empty at the end. A lost
race is a move new/ -> cur/ that failed with ``NotFound``/``AlreadyExists`` (the
claim loop catches it and tries another name), counted by a backend subclass.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import Samples, check_exactly_once, payloads

# The servers are the tests' own (moto one request at a time, LocalStack without Docker).
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)
from s3_launch import localstack, moto_server

CREDENTIALS: dict[str, Any] = {
    "key": "test",
    "secret": "test",
    "client_kwargs": {"region_name": "us-east-1"},
}
PREFIX = "spool"
FLOOR_PER_MESSAGE = 4  # PUT + COPY + DELETE + DELETE; the target too (plus the amortized LIST)
SHORT = {
    "PutObject": "PUT",
    "CopyObject": "COPY",
    "DeleteObject": "DELETE",
    "ListObjectsV2": "LIST",
    "HeadObject": "HEAD",
    "GetObject": "GET",
    "CreateMultipartUpload": "MPU create",
    "UploadPartCopy": "MPU part copy",
    "CompleteMultipartUpload": "MPU complete",
    "AbortMultipartUpload": "MPU abort",
}
STEPS = ("deliver", "claim", "read", "ack")
QUEUE_STEPS = ("extend", "release", "fail", "recover")  # each counted per occurrence
FLOOR: dict[tuple[str, str], float] = {
    ("deliver", "PUT"): 1,
    ("claim", "LIST"): 1 / 1000,
    ("claim", "COPY"): 1,
    ("claim", "DELETE"): 1,
    ("ack", "DELETE"): 1,
}
RECORDS = "HEAD .records"  # the store's look for attempt records: per second, not per message
# HEADs that the backend adds for what its probe and first requests found on a server.
WORKAROUND_HEADS = {
    "looks_before_copying": (
        ("claim", "HEAD"),
        "a HEAD of the destination before each copy (the probe found that a refused copy "
        "had overwritten its destination) and, without conditional deletes, one of the "
        "source before its plain DELETE",
    ),
    "no_conditional_delete": (
        ("ack", "HEAD"),
        "a HEAD before each plain DELETE: the server answered 501 to a conditional DELETE",
    ),
}
FALSE_FINDING = (
    "its claim HEAD is a false finding of the probe, which tries the conditional "
    "CopyObject first: moto ignores that condition and overwrites the probe's destination, "
    "so the check made after the multipart completion's refusal sees the copy's damage"
)
MOTO_NOTE = (
    "moto answers one request at a time (its conditional checks take no lock), in this "
    "process: its ratios show the protocol's overhead under contention, not server scaling"
)
LOCALSTACK_ENV = "FILESPOOL_LOCALSTACK_PYTHON"


# -- stores -------------------------------------------------------------------------------------


def _raw(backend: Any, operation: str, **params: Any) -> Any:
    """Call the backend's raw client synchronously (bucket housekeeping only)."""
    import fsspec.asyn

    return fsspec.asyn.sync(backend.fs.loop, getattr(backend.client, operation), **params)


@contextlib.contextmanager
def fresh_store(endpoint: str, **extra: Any) -> Iterator[Any]:
    """A prepared store in a new bucket; the bucket is emptied and deleted afterwards."""
    from filespool import FileStore
    from filespool.backends.s3 import S3Backend

    bucket = f"fsbench-{uuid.uuid4().hex[:16]}"
    backend = S3Backend(bucket, PREFIX, endpoint_url=endpoint, **CREDENTIALS, **extra)
    _raw(backend, "create_bucket", Bucket=bucket)
    try:
        store = FileStore(backend)
        store.prepare()
        yield store
    finally:
        with contextlib.suppress(Exception):
            _drop_bucket(backend)


def _drop_bucket(backend: Any) -> None:
    while True:
        listed = _raw(backend, "list_objects_v2", Bucket=backend.bucket)
        keys = [{"Key": item["Key"]} for item in listed.get("Contents", ())]
        if not keys:
            break
        _raw(backend, "delete_objects", Bucket=backend.bucket, Delete={"Objects": keys})
    _raw(backend, "delete_bucket", Bucket=backend.bucket)


def _fill(store: Any, messages: list[bytes]) -> None:
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(store.deliver, messages))


# -- requests per message ---------------------------------------------------------------------


class RequestTally:
    """A backend's API calls by (step, request), and its HTTP sends, from botocore events."""

    def __init__(self, backend: Any) -> None:
        self.step = "setup"
        self.calls: Counter[tuple[str, str]] = Counter()
        self.sends = 0
        self._root = f"{backend.prefix}/" if backend.prefix else ""
        self.attach(backend.client)

    def attach(self, client: Any) -> None:
        """Count the requests of `client` too (an event loop's own, on the asyncio face)."""
        client.meta.events.register("before-parameter-build.s3", self._on_call)
        client.meta.events.register("before-send.s3", self._on_send)

    def _on_call(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        key = str(params.get("Key", params.get("Prefix", "")))
        folder = key.removeprefix(self._root).split("/", 1)[0]
        request = SHORT.get(model.name, model.name)
        self.calls[self.step, f"{request} .records" if folder == ".records" else request] += 1

    def _on_send(self, **_: Any) -> None:
        self.sends += 1


def count_requests(endpoint: str, messages: int, **extra: Any) -> dict[str, Any]:
    """Deliver ``messages``, then claim, read and ack them one by one, counting requests."""
    with fresh_store(endpoint, **extra) as store:
        store.deliver(b"warm-up")  # the probe and the folder-marker HEADs: once per store
        warm = store.claim()
        warm.read()
        warm.ack()
        tally = RequestTally(store.backend)
        tally.step = "deliver"
        for data in payloads(messages):
            store.deliver(data)
        claimed = 0
        while True:
            tally.step = "claim"
            claim = store.claim()
            if claim is None:
                break
            tally.step = "read"
            claim.read()
            tally.step = "ack"
            claim.ack()
            claimed += 1
        assert claimed == messages, f"{claimed} claims of {messages} messages"
        calls, retries = Counter(tally.calls), tally.sends - sum(tally.calls.values())
        backend = store.backend
        per_step = _count_queue_steps(store, tally, occurrences=max(1, messages // 10))
    return {  # the bucket's teardown is not counted
        "method": backend.method,
        # What the backend learnt from the server (its probe, a 501): they cost HEADs.
        "looks_before_copying": backend._look_before_copying,
        "no_conditional_delete": not backend._delete_if_match,
        "messages": messages,
        "per_message": {f"{step}/{request}": n / messages for (step, request), n in calls.items()},
        "per_step": per_step,
        "retries": retries,
    }


def _count_queue_steps(store: Any, tally: RequestTally, occurrences: int) -> dict[str, float]:
    """Requests per renewal, release, dead-lettering and recovery of a claim (in a recovery
    its listing of cur/ too), averaged over `occurrences` of each."""
    tally.step = "setup"
    for _ in range(2 * occurrences):  # a warm-up makes the records and failed/ folders
        store.deliver(b"x")
    store.claim().release()
    store.claim().fail("warm-up")
    tally.calls.clear()
    for _ in range(occurrences):
        tally.step = "setup"
        claim = store.claim()
        tally.step = "extend"
        claim.extend()
        tally.step = "release"
        claim.release()
        tally.step = "setup"
        claim = store.claim()
        tally.step = "fail"
        claim.fail("benchmark")
        tally.step = "setup"
        store.deliver(b"x")
        store.claim()
        tally.step = "recover"
        store.recover(older_than=0)
    return {
        f"{step}/{request}": n / occurrences
        for (step, request), n in tally.calls.items()
        if step in QUEUE_STEPS
    }


def _cost(row: dict[str, Any]) -> None:
    """Add the per-message totals and whether the target is met to a request-count row.

    The HEADs of a server workaround the backend switched on are stated apart.
    """
    counts = {tuple(key.split("/", 1)): value for key, value in row["per_message"].items()}
    path = [
        (s, r) for s, r in counts if s in ("deliver", "claim", "ack") and r not in ("LIST", RECORDS)
    ]
    total = sum(counts[key] for key in path)
    stated = {
        f"{step} {request}": {"per_message": counts[(step, request)], "why": why}
        for flag, ((step, request), why) in WORKAROUND_HEADS.items()
        if row[flag] and (step, request) in counts
    }
    row["total"] = total  # deliver + claim + ack, without the LIST and the .records HEAD
    row["stated_extra"] = stated
    row["counted"] = total - sum(extra["per_message"] for extra in stated.values())
    row["list_per_1000"] = 1000 * counts.get(("claim", "LIST"), 0.0)
    row["records_per_message"] = counts.get(("ack", RECORDS), 0.0)
    row["path"] = "native copy" if row["method"] == "copy" else "fallback multipart"
    row["within_target"] = row["counted"] <= FLOOR_PER_MESSAGE + 1e-9


# -- concurrent claimers ------------------------------------------------------------------------


@functools.cache
def _counting_class() -> type:
    from filespool.backends.s3 import S3Backend
    from filespool.errors import AlreadyExists, NotFound

    class CountingS3Backend(S3Backend):
        """Counts the moves new/ -> cur/ that lost a race (the claim loop moves on)."""

        lost = 0

        def move(
            self, source: str, name: str, destination: str, new_name: str | None = None
        ) -> None:
            try:
                super().move(source, name, destination, new_name)
            except (NotFound, AlreadyExists):
                if (source, destination) == ("new", "cur"):
                    self.lost += 1
                raise

    return CountingS3Backend


def _claimer(template: Any, barrier: threading.Barrier) -> dict[str, Any]:
    """One claimer thread: its own backend and store; drains the spool after the barrier."""
    try:
        return _claim_all(template, barrier)
    except BaseException:
        barrier.abort()  # the others stop waiting for this one
        raise


def _claim_all(template: Any, barrier: threading.Barrier) -> dict[str, Any]:
    from filespool import FileStore

    backend = _counting_class()(
        template.bucket,
        template.prefix,
        claim_method=template.claim_method,
        **template.storage_options,
    )
    backend.method  # noqa: B018  (probe now, untimed, as a worker would at its first claim)
    store = FileStore(backend)
    store.names("cur")  # sees cur/'s marker: no HEAD of it in the timed part
    tally = RequestTally(backend)
    found = []
    barrier.wait(timeout=300)
    start = time.perf_counter()
    while (claim := store.claim()) is not None:
        found.append(claim.read())
        claim.ack()
    end = time.perf_counter()
    return {
        "method": backend.method,
        "found": found,
        "lost": backend.lost,
        "requests": sum(tally.calls.values()),
        "start": start,
        "end": end,
    }


def drain(endpoint: str, messages: int, claimers: int, **extra: Any) -> dict[str, Any]:
    """Fill a spool with ``messages``, let ``claimers`` threads drain it; check exactly-once."""
    with fresh_store(endpoint, **extra) as store:
        _fill(store, payloads(messages))
        barrier = threading.Barrier(claimers)
        with ThreadPoolExecutor(claimers) as pool:
            futures = [pool.submit(_claimer, store.backend, barrier) for _ in range(claimers)]
            outcomes = [future.result() for future in futures]
        leftovers = store.names("new") + store.names("cur")
    claimed = [data for outcome in outcomes for data in outcome["found"]]
    problem = check_exactly_once(claimed, messages)
    if leftovers:
        problem = f"{len(leftovers)} files left in new/ and cur/" + (
            f"; {problem}" if problem else ""
        )
    seconds = max(o["end"] for o in outcomes) - min(o["start"] for o in outcomes)
    return {
        "method": outcomes[0]["method"],
        "rate": messages / seconds,
        "lost_races": sum(o["lost"] for o in outcomes),
        "requests_per_message": sum(o["requests"] for o in outcomes) / messages,
        "split": [len(o["found"]) for o in outcomes],
        "problem": problem,
    }


def throughput(
    server: str, endpoint: str, config: Any, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Rows of total throughput at each claimer count, with ratios to 1 claimer."""
    counts = config.s3_claimers
    samples = {k: Samples() for k in counts}
    problems: dict[int, list[str]] = {k: [] for k in counts}
    method = ""
    for repetition in range(config.repeat):
        this_round = {}
        for claimers in counts if repetition % 2 == 0 else counts[::-1]:
            outcome = drain(endpoint, config.s3_drain_messages, claimers)
            this_round[claimers] = outcome["rate"]
            method = outcome["method"]
            for metric in ("rate", "lost_races", "requests_per_message"):
                samples[claimers].add(metric, outcome[metric])
            if outcome["problem"]:
                problems[claimers].append(outcome["problem"])
            log(
                f"  s3 {server} {claimers:2} claimer(s) rep {repetition + 1}/{config.repeat}: "
                f"{outcome['rate']:6.1f} msg/s, {outcome['lost_races']} lost races, "
                f"{outcome['requests_per_message']:.2f} requests/msg, split {outcome['split']}, "
                f"exactly once: {outcome['problem'] or 'yes'}"
            )
        for claimers, rate in this_round.items():
            samples[claimers].add("vs_one", rate / this_round[counts[0]])
    return [_throughput_row(server, method, k, config, samples[k], problems[k]) for k in counts]


def _throughput_row(
    server: str, method: str, claimers: int, config: Any, samples: Samples, problems: list[str]
) -> dict[str, Any]:
    return {
        "server": server,
        "method": method,
        "claimers": claimers,
        "messages": config.s3_drain_messages,
        "repeat": config.repeat,
        "msg_per_s": samples.median("rate"),
        "vs_one": samples.median("vs_one"),
        "min_vs_one": min(samples.values["vs_one"]),
        "lost_races": samples.median("lost_races"),
        "lost_races_max": max(samples.values["lost_races"]),
        "requests_per_message": samples.median("requests_per_message"),
        "exactly_once": not problems,
        "problems": problems,
        "samples": samples.values,
    }


# -- the section -------------------------------------------------------------------------------


def _measure_server(
    server: str,
    endpoint: str,
    configurations: list[tuple[str, dict[str, Any]]],
    config: Any,
    log: Callable[[str], None],
    result: dict[str, Any],
) -> None:
    for label, extra in configurations:
        log(f"  s3 {server} {label}: requests per message, N = {config.s3_messages}")
        row = {
            "server": server,
            "config": label,
            **count_requests(endpoint, config.s3_messages, **extra),
        }
        _cost(row)
        result["requests"].append(row)
    result["throughput"].extend(throughput(server, endpoint, config, log))


def _missing() -> list[str]:
    return [name for name in ("s3fs", "moto", "werkzeug") if importlib.util.find_spec(name) is None]


def run(config: Any, log: Callable[[str], None]) -> dict[str, Any]:
    result: dict[str, Any] = {"requests": [], "throughput": [], "servers": {}, "notes": [MOTO_NOTE]}
    missing = _missing()
    if missing:
        result["servers"]["all"] = f"skipped: {', '.join(missing)} not installed (filespool[test])"
        return result
    with moto_server() as endpoint:
        moto_configs = [("probed", {}), ("copy forced", {"claim_method": "copy"})]
        _measure_server("moto", endpoint, moto_configs, config, log, result)
        result["servers"]["moto"] = "in-process, one request at a time"
    python = config.localstack_python
    if not python:
        result["servers"]["LocalStack"] = (
            f"skipped: {LOCALSTACK_ENV} is not set (nox -s bench sets it; or --localstack-python)"
        )
        return result
    with contextlib.ExitStack() as stack:
        started = time.perf_counter()
        try:
            endpoint = stack.enter_context(localstack(python))
        except (OSError, RuntimeError, TimeoutError) as error:
            result["servers"]["LocalStack"] = f"FAILED to start: {error}"
            return result
        result["servers"]["LocalStack"] = (
            f"child process {python}, started in {time.perf_counter() - started:.1f} s"
        )
        _measure_server("LocalStack", endpoint, [("probed", {})], config, log, result)
    return result


# -- the summary ----------------------------------------------------------------------------------


def _figure(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value - round(value)) < 1e-9 else f"{value:.3f}"


def _request_lines(rows: list[dict[str, Any]]) -> list[str]:
    keys = sorted(
        {tuple(key.split("/", 1)) for row in rows for key in row["per_message"]} | set(FLOOR),
        key=lambda k: (STEPS.index(k[0]), k[1]),
    )
    names = [f"{row['server']} {row['config']}" for row in rows]
    widths = [max(len(name), len(row["method"]), 6) for name, row in zip(names, rows, strict=True)]

    def cells(values: list[str]) -> str:
        return "".join(f" {v:>{w}}" for v, w in zip(values, widths, strict=True))

    lines = [
        f"{'step':8} {'request':17} {'floor':>6}" + cells(names),
        f"{'':8} {'(per message)':17} {'':>6}" + cells([row["method"] for row in rows]),
    ]
    lines.append("-" * len(lines[0]))
    for step, request in keys:
        values = [_figure(row["per_message"].get(f"{step}/{request}")) for row in rows]
        lines.append(
            f"{step:8} {request:17} {_figure(FLOOR.get((step, request))):>6}" + cells(values)
        )
    lines.append("-" * len(lines[0]))
    totals = [
        ("deliver+claim+ack", FLOOR_PER_MESSAGE, [f"{row['total']:.2f}" for row in rows]),
        ("LIST per 1,000", 1, [f"{row['list_per_1000']:.1f}" for row in rows]),
        ("retries (sends)", 0, [str(row["retries"]) for row in rows]),
        ("within target", "", [_verdict(row) for row in rows]),
    ]
    for label, floor, values in totals:
        lines.append(f"{label:26} {floor!s:>6}" + cells(values))
    return lines


def _queue_step_lines(rows: list[dict[str, Any]]) -> list[str]:
    names = [f"{row['server']} {row['config']}" for row in rows]
    widths = [max(len(name), 6) for name in names]
    header = "".join(f" {n:>{w}}" for n, w in zip(names, widths, strict=True))
    lines = [f"{'step':8} {'request':17}" + header]
    lines.append("-" * len(lines[0]))
    keys = sorted(
        {tuple(key.split("/", 1)) for row in rows for key in row["per_step"]},
        key=lambda k: (QUEUE_STEPS.index(k[0]), k[1]),
    )
    for step in QUEUE_STEPS:
        for key in [k for k in keys if k[0] == step] + [(step, "total")]:
            values = [
                sum(v for k, v in row["per_step"].items() if k.startswith(f"{step}/"))
                if key[1] == "total"
                else row["per_step"].get("/".join(key), 0.0)
                for row in rows
            ]
            cells = "".join(f" {_figure(v):>{w}}" for v, w in zip(values, widths, strict=True))
            lines.append(f"{key[0]:8} {key[1]:17}" + cells)
    return lines


def _verdict(row: dict[str, Any]) -> str:
    if row["path"] != "native copy":
        return "fallback"
    if row["stated_extra"]:
        extra = sum(item["per_message"] for item in row["stated_extra"].values())
        return f"{'yes' if row['within_target'] else 'NO'} +{extra:.0f} HEAD"
    return "yes" if row["within_target"] else "NO"


def _throughput_lines(rows: list[dict[str, Any]]) -> list[str]:
    header = (
        f"{'server':10} {'method':9} {'claimers':>8} {'M':>5} {'total msg/s':>11} {'vs 1':>6} "
        f"{'worst vs 1':>10} {'lost races (median/max)':>23} {'requests/msg':>12} "
        f"{'exactly once':>12}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['server']:10} {row['method']:9} {row['claimers']:>8} {row['messages']:>5} "
            f"{row['msg_per_s']:>11.1f} {row['vs_one']:>6.0%} {row['min_vs_one']:>10.0%} "
            f"{row['lost_races']:>13.0f} / {row['lost_races_max']:<7.0f} "
            f"{row['requests_per_message']:>12.2f} {row['exactly_once']!s:>12}"
        )
    return lines


def summarize(result: dict[str, Any]) -> list[str]:
    lines = [f"{server}: {status}" for server, status in result["servers"].items()]
    if result["requests"]:
        lines += ["", "Requests per message (API calls from botocore events, after a warm-up):"]
        lines += _request_lines(result["requests"])
        lines += [
            "deliver+claim+ack leaves out the LIST (amortized), the read's GET and the store's",
            "HEAD of .records/ (at most one a second). moto 'copy forced': moto ignores the",
            "CopyObject condition, so this path is only counted there, with one claimer.",
        ]
        for row in result["requests"]:
            for what, extra in row["stated_extra"].items():
                figure = f"{extra['per_message']:.2f} {what} per message"
                lines.append(f"{row['server']} {row['config']}: {figure}: {extra['why']}")
        lines += [
            f"{row['server']} {row['config']}: {FALSE_FINDING}"
            for row in result["requests"]
            if row["method"] == "multipart" and row["looks_before_copying"]
        ]
    if result["requests"]:
        lines += ["", "Requests per queue step (each step moves the claim to its next generation):"]
        lines += _queue_step_lines(result["requests"])
    if result["throughput"]:
        lines += ["", "Concurrent claimers (threads, own store each; ratios within a repetition):"]
        lines += _throughput_lines(result["throughput"])
        lines += [f"Note: {note}." for note in result["notes"]]
    return lines
