"""The S3 backend against moto's server: the contract, plus errors, faults, costs and crashes."""

from __future__ import annotations

import asyncio
import os
import pickle
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import pytest

from filespool import AlreadyExists, ExclusiveMoveUnavailable, FileStore
from filespool.backends import s3
from filespool.backends.base import Backend
from filespool.backends.s3 import (
    S3AccessDenied,
    S3BucketMissing,
    S3EndpointUnreachable,
    S3Unsupported,
)
from filespool.testing import AsyncFace
from s3_launch import free_port
from s3_servers import (
    DropResponseProxy,
    S3Contract,
    backend_of,
    claim_and_crash_before_the_delete,
    count_by_folder,
    count_calls,
    everywhere,
    fail_first,
    filesystem,
    lose_responses,
    options,
    raw,
    store_on,
)


@pytest.mark.slow
class TestS3Moto(S3Contract):
    # moto answers one request at a time (see s3_launch.moto_server) from this process:
    # 5 rounds of each 8-thread race and 10 runs of the state machine (25 took 36 s of
    # the class's 3 minutes) keep the class near two and a half minutes.
    race_rounds = 5
    state_machine_examples = 10


@pytest.mark.slow
class TestS3MotoAsyncFace(TestS3Moto):
    """The whole contract again through the native asyncio face (`call_async`): the same
    requests, made on an event loop's own client."""

    race_rounds = 3

    @pytest.fixture
    def backend(self, endpoint: str, bucket: str) -> Iterator[Backend]:
        face = AsyncFace(store_on(endpoint, bucket).backend)
        yield face
        face.close()


# -- locations, options and setup errors ------------------------------------------------


def test_url_folder_paths_and_fsspec_reads_listed_urls(endpoint: str, bucket: str) -> None:
    store = store_on(endpoint, bucket)
    assert store.url == f"s3://{bucket}/spool"
    assert FileStore(f"s3://{bucket}", **options(endpoint)).url == f"s3://{bucket}"
    store.prepare()
    name = store.deliver(b"payload")
    assert store.list("new") == [f"s3://{bucket}/spool/new/{name}"]
    with fsspec.open(store.list("new")[0], "rb", **options(endpoint)) as file:
        assert file.read() == b"payload"


def test_prepare_writes_one_marker_per_folder_and_nothing_else(endpoint: str, bucket: str) -> None:
    store = store_on(endpoint, bucket)
    store.prepare()
    listed = raw(filesystem(endpoint), "list_objects_v2", Bucket=bucket)
    assert sorted(item["Key"] for item in listed["Contents"]) == [
        "spool/cur/",
        "spool/new/",
        "spool/tmp/",
    ]


def test_bad_options_are_refused(endpoint: str, bucket: str) -> None:
    with pytest.raises(ValueError, match="claim_method"):
        store_on(endpoint, bucket, claim_method="rename")
    with pytest.raises(ValueError, match="part_size"):
        store_on(endpoint, bucket, part_size=1024)
    with pytest.raises(ValueError, match="needs a bucket"):
        FileStore("s3://", **options(endpoint))


def test_prepare_on_a_dead_endpoint_says_so() -> None:
    store = FileStore(
        "s3://some-bucket/spool",
        **options(
            f"http://127.0.0.1:{free_port()}", config_kwargs={"retries": {"max_attempts": 1}}
        ),
    )
    with pytest.raises(S3EndpointUnreachable, match="cannot connect to the S3 endpoint"):
        store.prepare()


def test_prepare_of_a_missing_bucket_says_so_and_creates_none(endpoint: str) -> None:
    missing = f"missing-{uuid.uuid4().hex[:12]}"
    with pytest.raises(S3BucketMissing, match=r"does not exist.*never creates buckets"):
        FileStore(f"s3://{missing}/spool", **options(endpoint)).prepare()
    names = [b["Name"] for b in raw(filesystem(endpoint), "list_buckets")["Buckets"]]
    assert missing not in names


def test_prepare_with_bad_credentials_says_so(
    endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    # moto's server checks credentials from the first request on (it knows no user).
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    store = FileStore(f"s3://{bucket}/spool", **{**options(endpoint), "key": "AKIAWRONG"})
    with pytest.raises(S3AccessDenied, match=r"InvalidAccessKeyId.*check the key and secret"):
        store.prepare()


def test_a_botocore_without_the_conditions_is_refused(
    endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(s3._REQUIRED_PARAMETERS, "CopyObject", ("IfNoneMatch", "IfNewer"))
    with pytest.raises(S3Unsupported, match="cannot send CopyObject with IfNewer"):
        store_on(endpoint, bucket).prepare()


# -- the claim method ----------------------------------------------------------------------


def test_moto_is_probed_once_onto_the_multipart_method(endpoint: str, bucket: str) -> None:
    store = store_on(endpoint, bucket)
    store.prepare()
    backend = backend_of(store)
    calls = count_calls(backend)
    first, second = store.deliver(b"1"), store.deliver(b"2")
    assert store.claim() == first
    assert backend.method == "multipart"
    # moto overwrote the probe's existing key on a conditional CopyObject, and refused it on
    # a conditional CompleteMultipartUpload.
    assert calls["CopyObject"] == 1
    assert calls["CompleteMultipartUpload"] == 2
    # The refused completion left the destination alone (the copy's overwrite is not
    # blamed on it): claims need no look before copying.
    assert backend._look_before_copying is False
    probes = calls.copy()
    assert store.claim() == second
    # No second probe; a claim is the multipart copy and the delete of the source, no HEAD.
    assert calls - probes == {
        "CreateMultipartUpload": 1,
        "UploadPartCopy": 1,
        "CompleteMultipartUpload": 1,
        "DeleteObject": 1,
    }
    assert not fsspec_keys(endpoint, bucket, "spool/.probe/")
    # A pickled copy (another worker) keeps what was learnt.
    assert pickle.loads(pickle.dumps(backend))._method == "multipart"


def test_a_server_that_overwrites_on_every_method_gets_no_claims(
    endpoint: str, bucket: str
) -> None:
    store = store_on(endpoint, bucket)
    store.prepare()
    backend = backend_of(store)

    def drop_the_condition(params: dict[str, Any], **_: Any) -> None:
        params.pop("IfNoneMatch", None)  # as a server that ignores it would

    backend.client.meta.events.register(
        "before-parameter-build.s3.CompleteMultipartUpload", drop_the_condition
    )
    name = store.deliver(b"x")
    with pytest.raises(ExclusiveMoveUnavailable, match="cannot move files there"):
        store.claim()
    assert store.names("new") == [name]
    assert store.names("cur") == []


def test_a_forced_method_is_used_without_a_probe(endpoint: str, bucket: str) -> None:
    store = store_on(endpoint, bucket, claim_method="copy")
    store.prepare()
    backend = backend_of(store)
    calls = count_calls(backend)
    name = store.deliver(b"x")
    assert store.claim() == name
    assert backend.method == "copy"
    assert calls["CopyObject"] == 1
    assert calls["CreateMultipartUpload"] == 0


def fsspec_keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    listed = raw(filesystem(endpoint), "list_objects_v2", Bucket=bucket, Prefix=prefix)
    return [item["Key"] for item in listed.get("Contents", [])]


# -- request counts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "claim_cost"),
    [
        ("copy", {"CopyObject": 1, "DeleteObject": 1}),
        (
            "multipart",
            {
                "CreateMultipartUpload": 1,
                "UploadPartCopy": 1,
                "CompleteMultipartUpload": 1,
                "DeleteObject": 1,
            },
        ),
    ],
)
def test_requests_per_message(
    endpoint: str, bucket: str, method: str, claim_cost: dict[str, int]
) -> None:
    messages = 10
    store = store_on(endpoint, bucket, claim_method=method)
    store.prepare()
    store.deliver(b"warm-up")
    store.claim().ack()  # type: ignore[union-attr]
    calls = count_by_folder(backend_of(store))

    names = [store.deliver(b"x") for _ in range(messages)]
    assert calls == {("PutObject", "new"): messages}  # deliver: one PUT

    calls.clear()
    claims = [store.claim() for _ in range(messages)]
    assert claims == names
    assert store.claim() is None
    # One LIST found all ten, one more found none left.
    claim_calls = {
        (op, "cur" if op != "DeleteObject" else "new"): n * messages for op, n in claim_cost.items()
    }
    assert calls == {("ListObjectsV2", "new"): 2, **claim_calls}

    calls.clear()
    started = time.monotonic()
    for claim in claims:
        claim.ack()  # type: ignore[union-attr]
    seconds = time.monotonic() - started
    # ack: one conditional DELETE (the ETag is known from the claim). The store looks at
    # most once a second whether attempt records exist (a HEAD, and one of the .records/
    # marker): amortized, and on no message's path.
    records = {key: n for key, n in calls.items() if key[1] == ".records"}
    assert calls - Counter(records) == {("DeleteObject", "cur"): messages}
    assert set(records) <= {("HeadObject", ".records")}
    assert sum(records.values()) <= 2 * (1 + int(seconds))


def test_batches_make_the_same_requests_per_message(endpoint: str, bucket: str) -> None:
    """deliver_many, claim_many, read_many and ack_many keep their requests in flight
    together (`concurrency`), each one a message would make alone: 1 PUT, 1 COPY + 1
    DELETE, 1 GET, 1 DELETE (copy method), plus the listings."""
    messages = 24
    store = store_on(endpoint, bucket, claim_method="copy", concurrency=8)
    store.prepare()
    store.deliver(b"warm-up")
    store.claim().ack()  # type: ignore[union-attr]
    calls = count_by_folder(backend_of(store))
    names = store.deliver_many([b"x"] * messages)
    assert calls == {("PutObject", "new"): messages}
    calls.clear()
    claims = store.claim_many(messages)
    assert sorted(claims) == names
    listings = calls.pop(("ListObjectsV2", "new"))
    assert listings <= 2
    assert calls == {("CopyObject", "cur"): messages, ("DeleteObject", "new"): messages}
    calls.clear()
    assert [data for _, data in store.read_many(claims)] == [b"x"] * messages
    assert calls == {("GetObject", "cur"): messages}
    calls.clear()
    assert store.ack_many(claims) == []
    records = {key: n for key, n in calls.items() if key[1] == ".records"}
    assert set(records) <= {("HeadObject", ".records")}
    assert calls - Counter(records) == {("DeleteObject", "cur"): messages}


@pytest.mark.parametrize("batch", ["deliver_many", "claim_many", "read_many", "ack_many"])
def test_a_batch_keeps_its_requests_in_flight_together(
    endpoint: str, bucket: str, batch: str
) -> None:
    """Requests of a batch wait, before they are sent, until four are waiting: a batch
    made one request at a time would never get four (the waits would time out).
    `claim_many` makes its first claim alone (it may wait for a file): that one passes."""
    store = store_on(endpoint, bucket, claim_method="copy", concurrency=4)
    store.prepare()
    names = [] if batch == "deliver_many" else store.deliver_many([b"x"] * 9)
    claims = store.claim_many(9) if batch in ("read_many", "ack_many") else []
    operation = {
        "deliver_many": "PutObject",
        "claim_many": "CopyObject",
        "read_many": "GetObject",
        "ack_many": "DeleteObject",
    }[batch]
    sent, timed_out = 0, 0
    four = asyncio.Event()

    async def until_four_wait(**_: Any) -> None:
        nonlocal sent, timed_out
        sent += 1
        if batch == "claim_many" and sent == 1:
            return
        if sent >= 4 + (batch == "claim_many"):
            four.set()
        try:
            await asyncio.wait_for(four.wait(), 10)
        except TimeoutError:
            timed_out += 1

    backend_of(store).client.meta.events.register(f"before-send.s3.{operation}", until_four_wait)
    if batch == "deliver_many":
        assert len(store.deliver_many([b"x"] * 9)) == 9
    elif batch == "claim_many":
        assert sorted(store.claim_many(9)) == names
    elif batch == "read_many":
        assert [data for _, data in store.read_many(claims)] == [b"x"] * 9
    else:
        assert store.ack_many(claims) == []
    assert (sent, timed_out) == (9, 0)


def test_requests_per_queue_step(endpoint: str, bucket: str) -> None:
    """What renewing, giving back, dead-lettering and recovering a claim cost (copy method):
    each step moves the claim to its next generation first, a CopyObject and a DeleteObject
    on S3 (docs/queue.md, "What each step costs")."""
    store = store_on(endpoint, bucket, claim_method="copy")
    store.prepare()
    for _ in range(3):
        store.deliver(b"x")
    store.release(store.claim())  # type: ignore[arg-type]  # the records folder exists now
    store.fail(store.claim(), "warm-up")  # type: ignore[arg-type]  # so does failed/
    calls = count_calls(backend_of(store))

    def cost(step: Callable[[], object]) -> dict[str, int]:
        before = Counter(calls)
        step()
        return dict(calls - before)

    move = {"CopyObject": 1, "DeleteObject": 1}
    record = {"GetObject": 1, "PutObject": 1}
    claim = store.claim()
    assert claim is not None
    assert cost(claim.extend) == move
    assert cost(claim.release) == dict(Counter(move) + Counter(move) + Counter(record))
    claim = store.claim()
    assert claim is not None
    assert cost(lambda: claim.fail("bad")) == dict(Counter(move) + Counter(move) + Counter(record))
    assert store.claim() is not None
    # A listing of cur/, a HEAD for a copy left in new/ by an interrupted claim, the
    # take-over, the record and the give-back.
    assert cost(lambda: store.recover(0)) == {
        "ListObjectsV2": 1,
        "HeadObject": 1,
        **dict(Counter(move) + Counter(move) + Counter(record)),
    }


# -- faults ------------------------------------------------------------------------------------


def drain(store: FileStore) -> list[str]:
    claimed = []
    while (claim := store.claim()) is not None:
        claimed.append(str(claim))
    return claimed


@pytest.mark.parametrize("method", ["copy", "multipart"])
def test_slow_down_and_conflict_answers_are_retried(
    endpoint: str, bucket: str, method: str
) -> None:
    store = store_on(endpoint, bucket, claim_method=method)
    store.prepare()
    backend = backend_of(store)
    writes = ["PutObject", "CopyObject", "CompleteMultipartUpload", "DeleteObject"]
    slow = {op: fail_first(backend, op, 2, 503, "SlowDown") for op in writes}
    # 409 ConditionalRequestConflict: botocore does not retry it, the backend does.
    conflict = {op: fail_first(backend, op, 1, 409, "ConditionalRequestConflict") for op in writes}
    names = [store.deliver(b"x") for _ in range(3)]
    assert drain(store) == names
    unused = "CopyObject" if method == "multipart" else "CompleteMultipartUpload"
    for op in writes:
        assert (slow[op], conflict[op]) == (([2], [1]) if op == unused else ([0], [0])), op
    assert (store.names("new"), store.names("cur")) == ([], names)


@pytest.mark.parametrize(
    ("method", "operation"),
    [
        ("copy", "CopyObject"),
        ("copy", "DeleteObject"),
        ("multipart", "CompleteMultipartUpload"),
        ("multipart", "UploadPartCopy"),
        ("multipart", "DeleteObject"),
    ],
)
def test_a_lost_answer_to_an_applied_write_is_no_lost_race(
    endpoint: str, bucket: str, method: str, operation: str
) -> None:
    store = store_on(endpoint, bucket, claim_method=method)
    store.prepare()
    backend = backend_of(store)
    left = lose_responses(backend, "PutObject", 3)
    names = [store.deliver(b"x", f"m{i}") for i in range(3)]  # no false AlreadyExists
    assert left == [0]
    with pytest.raises(AlreadyExists):
        store.deliver(b"again", "m0")  # a real conflict is still one
    left = lose_responses(backend, operation, 3)
    assert drain(store) == names  # each claimed, none passed over as lost
    assert left == [0]
    assert (store.names("new"), store.names("cur")) == ([], names)


def test_a_lost_answer_to_create_and_its_upload(endpoint: str, bucket: str) -> None:
    store = store_on(endpoint, bucket)
    store.prepare()
    left = lose_responses(backend_of(store), "PutObject", 2)  # the placeholder, then the data
    with store.create("a-file") as file:
        file.write("content")
    assert left == [0]
    assert store.open("a-file", "tmp").read() == "content"


@pytest.mark.parametrize("method", ["copy", "multipart"])
def test_dropped_connections_lose_nothing_and_claim_nothing_twice(
    endpoint: str, bucket: str, method: str
) -> None:
    proxy = DropResponseProxy(endpoint)
    try:
        store = store_on(proxy.url, bucket, claim_method=method)
        store.prepare()
        # Drop the answers of conditional writes: the server applies them, the client sees a
        # closed connection (and its retry meets its own object).
        proxy.arm(rb"if-none-match", budget=4)
        names = [store.deliver(b"x") for _ in range(6)]
        assert proxy.dropped == 4
        proxy.arm(rb"if-none-match|if-match", budget=6)
        claimed = drain(store)
        assert proxy.dropped == 10
    finally:
        proxy.stop()
    assert claimed == names
    check = store_on(endpoint, bucket)
    assert (check.names("new"), check.names("cur")) == ([], names)


def test_racing_claimers_with_lost_answers_claim_each_message_once(
    endpoint: str, bucket: str
) -> None:
    store = store_on(endpoint, bucket)
    store.prepare()
    names = {store.deliver(b"x") for _ in range(60)}
    handles = [pickle.loads(pickle.dumps(store)) for _ in range(4)]
    for handle in handles:
        lose_responses(backend_of(handle), "CompleteMultipartUpload", 5)
        lose_responses(backend_of(handle), "DeleteObject", 5)
    with ThreadPoolExecutor(len(handles)) as pool:
        results = list(pool.map(drain, handles))
    claimed = [name for result in results for name in result]
    assert Counter(claimed) == Counter(names)
    assert (store.names("new"), set(store.names("cur"))) == ([], names)


# -- crashes -----------------------------------------------------------------------------------


def test_a_claimer_killed_between_copy_and_delete_loses_nothing(endpoint: str, bucket: str) -> None:
    # Only the multipart method: moto overwrites on a conditional CopyObject.
    store = store_on(endpoint, bucket)
    store.prepare()
    name = store.deliver(b"payload")
    claim_and_crash_before_the_delete(store.url, options(endpoint))
    assert everywhere(store) == {name: ["new", "cur"]}
    assert store.claim() is None  # the copy in cur/ blocks a second claim
    assert store.backend.same_file("cur", "new", name)
    assert store.recover(older_than=0).returned == [name]
    assert everywhere(store) == {name: ["new"]}
    claim = store.claim()
    assert claim == name
    assert claim.read() == b"payload"


def test_a_copy_is_not_the_same_file(endpoint: str, bucket: str) -> None:
    store = store_on(endpoint, bucket)
    store.prepare()
    name = store.deliver(b"x")
    store.copy(name, "new", "cur")
    assert not store.backend.same_file("cur", "new", name)
    assert not store.backend.same_file("new", "cur", name)


# -- large objects -----------------------------------------------------------------------------


def test_objects_over_the_copy_limit_are_copied_in_ranged_parts(endpoint: str, bucket: str) -> None:
    part = s3.MIN_PART_SIZE
    store = store_on(endpoint, bucket, claim_method="copy", part_size=part, max_copy_size=2 * part)
    store.prepare()
    backend = backend_of(store)
    data = os.urandom(2 * part + 1000)
    name = store.deliver(data)
    calls = count_calls(backend)
    assert store.claim() == name
    assert calls["CopyObject"] == 0
    assert calls["UploadPartCopy"] == 3
    assert calls["CompleteMultipartUpload"] == 1
    assert store.open(name, "cur", "rb").read() == data
    other = os.urandom(len(data))
    store.deliver(other, name)
    with pytest.raises(AlreadyExists):  # the condition is on the completion
        store.move(name, "new", "cur")
    assert store.open(name, "cur", "rb").read() == data
    assert store.open(name, "new", "rb").read() == other
