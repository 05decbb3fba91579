"""The Azure backend against Azurite: the contract, plus errors, faults, costs and crashes.

Run by ``nox -s azure``, which installs Azurite and names it in ``FILESPOOL_AZURITE``.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

if not os.environ.get("FILESPOOL_AZURITE"):
    pytest.skip(
        "the Azure lane needs Azurite: run `nox -s azure` (or set FILESPOOL_AZURITE to an "
        "npm --prefix folder with azurite installed)",
        allow_module_level=True,
    )

import fsspec
from azure_servers import (
    AzureContract,
    AzureHooks,
    backend_of,
    container_client,
    count_by_folder,
    count_calls,
    everywhere,
    store_on,
)
from azurite_launch import ACCOUNT, connection_string, free_port

from filespool import AlreadyExists, FileStore
from filespool.backends.azure import (
    AzureAccessDenied,
    AzureBackend,
    AzureContainerMissing,
    AzureEndpointUnreachable,
)
from filespool.testing import BackendContract, claim_in_processes
from s3_servers import DropResponseProxy


class TestAzurite(AzureContract):
    # 3 rounds of each 8-thread race (6 and 10 passed too, at 1.5 and 4 minutes more for
    # the class); the race below the class uses 8 processes and 1,000 messages. 10 runs of
    # the state machine (25 took 21 s).
    race_rounds = 3
    state_machine_examples = 10


class TestAzuriteBlocks(AzureHooks, BackendContract):
    """The backend's contract again with every copy made of blocks (Put Block From URL,
    then a conditional Put Block List), each of 100 bytes: the path of large blobs. (The
    queue over it is the same code as over the copy method, tested above.)"""

    race_rounds = 2

    @pytest.fixture
    def backend(self, endpoint: str, container: str) -> AzureBackend:
        store = store_on(endpoint, container, claim_method="blocks", block_size=100)
        return backend_of(store)


# -- locations, options and setup errors ------------------------------------------------


def test_urls_folder_paths_and_fsspec_reads_listed_urls(endpoint: str, container: str) -> None:
    store = store_on(endpoint, container)
    assert store.url == f"az://{container}/spool"
    other = FileStore(f"abfs://{container}", connection_string=connection_string(endpoint))
    assert other.url == f"abfs://{container}"
    store.prepare()
    name = store.deliver(b"payload")
    assert store.list("new") == [f"az://{container}/spool/new/{name}"]
    with fsspec.open(
        store.list("new")[0], "rb", connection_string=connection_string(endpoint)
    ) as file:
        assert file.read() == b"payload"


def test_prepare_writes_one_marker_per_folder_and_nothing_else(
    endpoint: str, container: str
) -> None:
    store_on(endpoint, container).prepare()
    names = sorted(blob.name for blob in container_client(endpoint, container).list_blobs())
    assert names == ["spool/cur/", "spool/new/", "spool/tmp/"]


def test_bad_options_are_refused(endpoint: str, container: str) -> None:
    with pytest.raises(ValueError, match="claim_method"):
        store_on(endpoint, container, claim_method="rename")
    with pytest.raises(ValueError, match="block_size"):
        store_on(endpoint, container, block_size=0)
    with pytest.raises(ValueError, match="concurrency"):
        store_on(endpoint, container, concurrency=0)
    with pytest.raises(ValueError, match="needs a container"):
        FileStore("az://", connection_string=connection_string(endpoint))
    with pytest.raises(ValueError, match=r"'\.\.' segment"):
        FileStore("az://box/jobs/../other", connection_string=connection_string(endpoint))
    with pytest.raises(ValueError, match="not an Azure container name"):
        FileStore("az://Upper_Case/x", connection_string=connection_string(endpoint))
    with pytest.raises(TypeError, match="unknown Azure storage option 'acount_name'"):
        FileStore("az://box/x", acount_name="me")
    with pytest.raises(TypeError, match="must be a string"):
        FileStore("az://box/x", account_key=12)
    with pytest.raises(ValueError, match="account_host"):
        FileStore("az://box/x", account_name="me", account_host="http://127.0.0.1:1")
    # adlfs's cache options are accepted, and do nothing here.
    FileStore("az://box/x", account_name="me", anon=True, default_fill_cache=False)


def test_the_environment_gives_the_account(
    endpoint: str, container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string(endpoint))
    store = FileStore(f"abfs://{container}/spool")
    store.prepare()
    assert store.names("new") == []


def test_a_store_without_an_account_says_what_to_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(Exception, match="needs an account: pass account_name"):
        FileStore("az://box/spool").prepare()


def test_prepare_on_a_dead_endpoint_says_so() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    store = FileStore("az://box/spool", connection_string=connection_string(dead))
    started = time.monotonic()
    with pytest.raises(AzureEndpointUnreachable, match=f"cannot connect.*{dead}/{ACCOUNT}"):
        store.prepare()
    assert time.monotonic() - started < 15


def test_prepare_of_a_missing_container_says_so_and_creates_none(endpoint: str) -> None:
    missing = f"missing-{uuid.uuid4().hex[:12]}"
    with pytest.raises(AzureContainerMissing, match=r"does not exist.*never creates containers"):
        store_on(endpoint, missing).prepare()
    from azure_servers import service

    assert missing not in [c.name for c in service(endpoint).list_containers()]


def test_prepare_with_bad_credentials_says_so(endpoint: str, container: str) -> None:
    wrong = connection_string(endpoint, key="d3Jvbmc=")
    store = FileStore(f"az://{container}/spool", connection_string=wrong)
    with pytest.raises(AzureAccessDenied, match=r"refused access.*AuthorizationFailure|check the"):
        store.prepare()


def test_azurite_is_probed_once_onto_the_copy_method(endpoint: str, container: str) -> None:
    store = store_on(endpoint, container)
    store.prepare()
    name = store.deliver(b"x")
    calls = count_calls(backend_of(store))
    assert store.claim() == name
    assert backend_of(store).method == "copy"
    # The probe: two Put Blobs, one refused conditional Copy Blob, a read of the blob it
    # left alone, two deletes; then the claim's Copy Blob and its delete.
    assert calls["CopyBlob"] == 2
    assert calls["PutBlockList"] == 0
    copy = pickle.loads(pickle.dumps(store))  # the finding travels with the backend
    calls = count_calls(backend_of(copy))
    copy.deliver(b"y")
    copy.claim()
    assert calls["CopyBlob"] == 1


def test_a_forced_conditional_copy_refuses_a_destination_made_just_before(
    endpoint: str, container: str
) -> None:
    """With the copy method forced (no probe to fall back on), the Copy Blob's own
    `If-None-Match: *` refuses a destination that appeared after the backend looked."""
    store = store_on(endpoint, container, claim_method="copy")
    store.prepare()
    backend = backend_of(store)
    backend.put("new", "a", b"mover", durable=False)
    copy_blob = backend._copy_blob

    def after_another_writer(*arguments: object, **keywords: object) -> object:
        backend.put("cur", "a", b"occupant", durable=False)
        return copy_blob(*arguments, **keywords)  # type: ignore[arg-type]

    backend._copy_blob = after_another_writer  # type: ignore[assignment,method-assign]
    with pytest.raises(AlreadyExists):
        backend.move("new", "a", "cur")
    assert (backend.read("new", "a"), backend.read("cur", "a")) == (b"mover", b"occupant")


def test_a_server_that_overwrites_on_every_method_gets_no_claims(
    endpoint: str, container: str
) -> None:
    from filespool import ExclusiveMoveUnavailable
    from filespool.backends import azure

    store = store_on(endpoint, container)
    store.prepare()
    store.deliver(b"x")
    backend = backend_of(store)
    original = azure.AzureBackend._copy_blob

    def overwrite(self: AzureBackend, source: str, key: str, *arguments: object, **_: object):  # type: ignore[no-untyped-def]
        self._call(self._blob(key).start_copy_from_url, self._blob(source).url)
        return original(self, source, f"{key}-elsewhere", *arguments, method="copy")

    backend._copy_blob = overwrite.__get__(backend)  # type: ignore[method-assign]
    with pytest.raises(ExclusiveMoveUnavailable, match="cannot move files there"):
        store.claim()


# -- costs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["copy", "blocks"])
def test_requests_per_message(endpoint: str, container: str, method: str) -> None:
    messages = 10
    store = store_on(endpoint, container, claim_method=method)
    store.prepare()
    store.deliver(b"warm-up")
    store.claim().ack()  # type: ignore[union-attr]
    calls = count_by_folder(backend_of(store))

    names = [store.deliver(b"x") for _ in range(messages)]
    assert calls == {("PutBlob", "new"): messages}  # deliver: one Put Blob

    calls.clear()
    claims = [store.claim() for _ in range(messages)]
    assert claims == names
    assert store.claim() is None
    # One listing found all ten (with their ETags), one more found none left; then per
    # claim a conditional copy and a conditional delete.
    copy = (
        {("CopyBlob", "cur"): messages}
        if method == "copy"
        else {("PutBlockFromURL", "cur"): messages, ("PutBlockList", "cur"): messages}
    )
    assert calls == {("ListBlobs", "new"): 2, **copy, ("DeleteBlob", "new"): messages}

    calls.clear()
    started = time.monotonic()
    for claim in claims:
        claim.ack()  # type: ignore[union-attr]
    seconds = time.monotonic() - started
    # ack: one conditional delete (the ETag is known from the claim). The store looks at
    # most once a second whether attempt records exist: amortized, on no message's path.
    records = {key: n for key, n in calls.items() if key[1] == ".records"}
    assert calls - Counter(records) == {("DeleteBlob", "cur"): messages}
    assert sum(records.values()) <= 2 * (1 + int(seconds))


def test_requests_per_queue_step(endpoint: str, container: str) -> None:
    """What renewing, giving back, dead-lettering and recovering a claim cost: each step
    moves the claim to its next generation first, a Copy Blob and a Delete Blob."""
    store = store_on(endpoint, container)
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

    move = {"CopyBlob": 1, "DeleteBlob": 1}
    record = {"GetBlob": 1, "PutBlob": 1}
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
        "ListBlobs": 1,
        "GetBlobProperties": 1,
        **dict(Counter(move) + Counter(move) + Counter(record)),
    }


def test_put_many_keeps_concurrency_requests_in_flight(endpoint: str, container: str) -> None:
    store = store_on(endpoint, container, concurrency=4)
    store.prepare()
    backend = backend_of(store)
    in_flight, most = [0], [0]
    upload = backend._upload

    def watched(*arguments: object, **keywords: object) -> object:
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        try:
            time.sleep(0.05)
            return upload(*arguments, **keywords)  # type: ignore[arg-type]
        finally:
            in_flight[0] -= 1

    backend._upload = watched  # type: ignore[assignment,method-assign]
    results = backend.put_many("new", [(f"m{i}", b"x") for i in range(12)], durable=True)
    assert results == [False] * 12
    assert most[0] == 4
    assert sorted(store.names("new")) == sorted(f"m{i}" for i in range(12))


# -- faults ------------------------------------------------------------------------------------


def drain(store: FileStore) -> list[str]:
    claimed = []
    while (claim := store.claim()) is not None:
        claimed.append(str(claim))
    return claimed


_LOSE_IN_CLAIMS = [rb"^PUT [^\r]*\r\n(.*\r\n)?if-none-match", rb"^DELETE ", rb"x-ms-copy-source:"]


@pytest.mark.parametrize("method", ["copy", "blocks"])
def test_dropped_connections_lose_nothing_and_claim_nothing_twice(
    endpoint: str, container: str, method: str
) -> None:
    """The answers of conditional writes are lost after the server applied them: no
    delivery is lost or misreported as AlreadyExists, no message is claimed twice or
    passed over."""
    proxy = DropResponseProxy(endpoint)
    try:
        store = store_on(proxy.url, container, claim_method=method, block_size=1)
        store.prepare()
        proxy.arm(rb"if-none-match", budget=4)
        names = [store.deliver(b"xy", f"m{i}") for i in range(6)]  # no false AlreadyExists
        assert proxy.dropped == 4
        with pytest.raises(AlreadyExists):
            store.deliver(b"again", "m0")  # a real conflict is still one
        # One answer lost per claim: of its copy (or block list), its delete, a block.
        claimed = []
        for turn in range(6):
            proxy.arm(_LOSE_IN_CLAIMS[turn % 3], budget=1)
            claimed.append(str(store.claim()))
        assert proxy.dropped == 10
        assert store.claim() is None
    finally:
        proxy.stop()
    assert claimed == names
    check = store_on(endpoint, container)
    assert (check.names("new"), check.names("cur")) == ([], names)


def test_a_lost_answer_to_create_and_its_upload(endpoint: str, container: str) -> None:
    proxy = DropResponseProxy(endpoint)
    try:
        store = store_on(proxy.url, container)
        store.prepare()
        proxy.arm(rb"^PUT [^ ]*/tmp/a-file", budget=2)  # the placeholder, then the data
        with store.create("a-file") as file:
            file.write("content")
        assert proxy.dropped == 2
        assert store.open("a-file", "tmp").read() == "content"
    finally:
        proxy.stop()


def test_racing_claimers_with_lost_answers_claim_each_message_once(
    endpoint: str, container: str
) -> None:
    proxy = DropResponseProxy(endpoint)
    try:
        store = store_on(proxy.url, container)
        store.prepare()
        names = {store.deliver(b"x") for _ in range(60)}
        assert backend_of(store).method == "copy"  # probed before the drops (pickled along)
        handles = [pickle.loads(pickle.dumps(store)) for _ in range(4)]
        proxy.arm(rb"if-none-match|if-match", budget=20)
        with ThreadPoolExecutor(len(handles)) as pool:
            results = list(pool.map(drain, handles))
        assert proxy.dropped == 20
    finally:
        proxy.stop()
    claimed = [name for result in results for name in result]
    assert Counter(claimed) == Counter(names)
    check = store_on(endpoint, container)
    assert (check.names("new"), set(check.names("cur"))) == ([], names)


def test_eight_processes_claim_a_thousand_messages_exactly_once(
    endpoint: str, container: str
) -> None:
    store = store_on(endpoint, container)
    store.prepare()
    names = backend_of(store).put_many(
        "new", [(f"m{i:04d}", b"m" * 64) for i in range(1000)], durable=True
    )
    assert names == [False] * 1000
    claimed = claim_in_processes(store, processes=8)  # each unpickles its own client
    counts = Counter(claimed)
    assert len(claimed) == 1000
    assert max(counts.values()) == 1
    assert store.names("new") == []
    assert len(store.names("cur")) == 1000


# -- crashes and large blobs --------------------------------------------------------------------

CRASHING_CLAIMER = """
import sys, time
from filespool import FileStore
from filespool.backends.azure import AzureBackend

def stall(self, key, etag):
    print("copied", flush=True)
    time.sleep(120)

AzureBackend._delete_moved_source = stall
FileStore(sys.argv[1], connection_string=sys.argv[2]).claim()
"""


def test_a_claimer_killed_between_copy_and_delete_loses_nothing(
    endpoint: str, container: str
) -> None:
    store = store_on(endpoint, container)
    store.prepare()
    name = store.deliver(b"payload")
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_CLAIMER, store.url, connection_string(endpoint)],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"copied\n"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert everywhere(store) == {name: ["new", "cur"]}
    assert store.claim() is None  # the copy in cur/ blocks a second claim
    assert store.backend.same_file("cur", "new", name)
    assert store.recover(older_than=0).returned == [name]
    assert everywhere(store) == {name: ["new"]}
    claim = store.claim()
    assert claim == name
    assert claim.read() == b"payload"


def test_a_copy_is_not_the_same_file(endpoint: str, container: str) -> None:
    store = store_on(endpoint, container)
    store.prepare()
    name = store.deliver(b"x")
    store.copy(name, "new", "cur")
    assert not store.backend.same_file("cur", "new", name)
    assert not store.backend.same_file("new", "cur", name)


def test_blobs_over_the_copy_limit_are_copied_in_blocks(endpoint: str, container: str) -> None:
    store = store_on(endpoint, container, max_copy_size=2048, block_size=1024)
    store.prepare()
    data = os.urandom(2 * 1024 + 100)
    name = store.deliver(data)
    assert backend_of(store).method == "copy"
    calls = count_calls(backend_of(store))
    assert store.claim() == name
    assert (calls["CopyBlob"], calls["PutBlockFromURL"], calls["PutBlockList"]) == (0, 3, 1)
    assert store.open(name, "cur", "rb").read() == data
    assert store.backend.same_file("cur", "new", name) is False  # the source went
    other = os.urandom(len(data))
    store.deliver(other, name)
    with pytest.raises(AlreadyExists):
        store.move(name, "new", "cur")
    assert store.open(name, "cur", "rb").read() == data
    assert store.open(name, "new", "rb").read() == other


def test_a_block_copy_of_a_source_replaced_midway_is_refused(endpoint: str, container: str) -> None:
    """The source changes between two Put Block From URL calls: the copy stops (the
    source condition), and no mixture of the two versions is committed."""
    store = store_on(endpoint, container, claim_method="blocks", block_size=4)
    store.prepare()
    backend = backend_of(store)
    backend.put("new", "a", b"aaaaaaaa", durable=False)
    client = container_client(endpoint, container)
    stage = backend._call
    staged = [0]

    def replace_after_the_first_block(function: object, *arguments: object, **keywords: object):  # type: ignore[no-untyped-def]
        if getattr(getattr(function, "func", function), "__name__", "") == "stage_block_from_url":
            staged[0] += 1
            if staged[0] == 2:
                client.upload_blob("spool/new/a", b"bbbbbbbb", overwrite=True)
        return stage(function, *arguments, **keywords)  # type: ignore[arg-type]

    backend._call = replace_after_the_first_block  # type: ignore[method-assign]
    backend.move("new", "a", "cur")  # taken again from the top: the new version, whole
    assert staged == [4]  # two blocks, the second refused; then both again
    assert backend.read("cur", "a") == b"bbbbbbbb"
    assert backend.list_names("new") == []


def _pretend_pending(backend: AzureBackend, final: str) -> None:
    """Make Copy Blob answer `pending` (as Azure may), and Get Blob Properties of the
    copy report `pending` twice, then `final`."""
    call, head = backend._call, backend._head
    polls = [0]

    def pending_copy(function: object, *arguments: object, **keywords: object) -> object:
        answer = call(function, *arguments, **keywords)  # type: ignore[arg-type]
        if getattr(function, "__name__", "") == "start_copy_from_url":
            return {**answer, "copy_status": "pending"}
        return answer

    def copy_in_progress(key: str) -> object:
        properties = head(key)
        if properties is not None and "/cur/" in key:
            polls[0] += 1
            properties.copy.status = "pending" if polls[0] <= 2 else final
        return properties

    backend._call = pending_copy  # type: ignore[assignment,method-assign]
    backend._head = copy_in_progress  # type: ignore[assignment,method-assign]


def test_a_pending_copy_is_waited_for_before_the_source_goes(endpoint: str, container: str) -> None:
    store = store_on(endpoint, container)
    store.prepare()
    name = store.deliver(b"payload")
    assert backend_of(store).method == "copy"
    _pretend_pending(backend_of(store), "success")
    assert store.claim() == name
    assert everywhere(store) == {name: ["cur"]}


def test_a_failed_pending_copy_is_removed_and_the_source_kept(
    endpoint: str, container: str
) -> None:
    from filespool.backends.azure import AzureStorageError

    store = store_on(endpoint, container)
    store.prepare()
    name = store.deliver(b"payload")
    assert backend_of(store).method == "copy"
    _pretend_pending(backend_of(store), "failed")
    with pytest.raises(AzureStorageError, match="could not copy"):
        store.move(name, "new", "cur")
    assert everywhere(store) == {name: ["new"]}
