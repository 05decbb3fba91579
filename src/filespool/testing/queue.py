"""The work queue's guarantees over any backend: claims, acks, give-backs, leases,
fencing (a late worker can do nothing to a later claim), deduplication, and the stall
matrix (a worker paused at any step loses nothing)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from filespool._steps import run
from filespool.demo import ExactlyOnce
from filespool.errors import LeaseLost, NotFound
from filespool.names import split_file_name
from filespool.queue import Claim, Record, Recovery
from filespool.store import FOLDERS, FileStore
from filespool.testing.faults import (
    BATCHES,
    STALLABLE,
    batch_stall_round,
    count_batch_steps,
    count_steps,
    stall_round,
)
from filespool.testing.harness import claim_in_processes, race, wait_for_storage_time_after
from filespool.testing.store import StoreContract


class QueueContract(StoreContract):
    """The work queue on one backend, beside `StoreContract`'s file operations."""

    def test_claim_of_an_empty_store_is_none(self, prepared: FileStore) -> None:
        """`claim()` of an empty store is None."""
        assert prepared.claim() is None

    def test_claim_takes_oldest_first_and_each_once(self, prepared: FileStore) -> None:
        """Claims take the oldest first, each file once."""
        names = [prepared.deliver(str(i)) for i in range(20)]
        claimed = [prepared.claim() for _ in range(20)]
        assert claimed == names
        assert prepared.claim() is None
        assert prepared.names("cur") == names
        assert prepared.names("new") == []

    def test_claim_sees_files_delivered_after_an_earlier_claim(self, prepared: FileStore) -> None:
        """A claim sees files delivered after an earlier claim listed `new/`."""
        first = prepared.deliver(b"1")
        second = prepared.deliver(b"2")
        assert prepared.claim() == first
        third = prepared.deliver(b"3")
        assert [prepared.claim(), prepared.claim(), prepared.claim()] == [second, third, None]

    def test_claim_many_takes_up_to_count_each_file_once(self, prepared: FileStore) -> None:
        """`claim_many(n)` claims up to n files, each once, as claims that work; none
        waiting gives an empty list."""
        names = [prepared.deliver(str(i)) for i in range(7)]
        first, second = prepared.claim_many(5), prepared.claim_many(5)
        assert (len(first), len(second)) == (5, 2)
        assert sorted([*first, *second]) == names
        assert prepared.claim_many(3) == []
        for claim in [*first, *second]:
            assert claim.read() == str(names.index(claim)).encode()
            claim.ack()
        assert [prepared.names(folder) for folder in FOLDERS] == [[], [], [], []]
        with pytest.raises(ValueError, match="at least 1"):
            prepared.claim_many(0)

    def test_ack_many_acks_each_and_returns_the_lost(self, prepared: FileStore) -> None:
        """`ack_many` acks every claim it can; claims whose lease was lost are returned,
        and the later claims of their files are left alone."""
        for i in range(4):
            prepared.deliver(str(i))
        stale = prepared.claim_many(4)
        prepared.recover(older_than=0)  # every lease ran out: all four are back in new/
        later = prepared.claim_many(4)
        assert sorted(prepared.ack_many(stale)) == sorted(stale)
        assert len(prepared.names("cur")) == 4
        assert prepared.ack_many(later) == []
        assert [prepared.names(folder) for folder in FOLDERS] == [[], [], [], []]

    def test_read_many_reads_each_and_leaves_out_the_lost(self, prepared: FileStore) -> None:
        """`read_many` pairs each claim with its content, in the claims' order; a claim
        whose lease was lost is left out, and a later claim of its file reads it."""
        for i in range(5):
            prepared.deliver(str(i), f"m{i}")
        claims = sorted(prepared.claim_many(5))
        pairs = prepared.read_many(claims)
        assert pairs == [(claim, claim.name[1:].encode()) for claim in claims]
        assert all(paired is claim for (paired, _), claim in zip(pairs, claims, strict=True))
        prepared.recover(older_than=0)  # every lease ran out: all five are back in new/
        later = prepared.claim_many(2)
        assert prepared.read_many(claims) == []
        stale_and_later = [claims[0], *later]
        assert [
            (paired.file_name, data) for paired, data in prepared.read_many(stale_and_later)
        ] == [(claim.file_name, claim.name[1:].encode()) for claim in later]
        assert prepared.read_many([]) == []

    def test_release_many_gives_each_back_and_returns_the_lost(self, prepared: FileStore) -> None:
        """`release_many` gives back every claim it can, counting a try (or not, with
        `attempt=False`) and keeping the reason; claims whose lease was lost are returned,
        and the later claims of their files are left alone."""
        prepared.max_attempts = 2
        for i in range(4):
            prepared.deliver(str(i))
        first = prepared.claim_many(4)
        assert prepared.release_many(first, "tried once") == []
        waiting = sorted(split_file_name(name)[0] for name in prepared.names("new"))
        assert waiting == sorted(claim.name for claim in first)
        assert {prepared.record(claim.name).reason for claim in first} == {"tried once"}
        second = prepared.claim_many(4)
        assert prepared.release_many(second[:2], attempt=False) == []
        assert prepared.release_many(second[2:], "twice") == []
        assert len(prepared.names("new")) == len(prepared.names("failed")) == 2
        stale = prepared.claim_many(2)
        prepared.recover(older_than=0)
        later = prepared.claim_many(2)
        assert sorted(prepared.release_many(stale)) == sorted(stale)
        assert sorted(prepared.names("cur")) == sorted(claim.file_name for claim in later)

    def test_claim_passes_over_a_name_already_in_cur(self, prepared: FileStore) -> None:
        """A name already in `cur/` is not claimed again."""
        prepared.deliver(b"x", "twice")
        prepared.copy("twice", "new", "cur")
        assert prepared.claim() is None
        assert prepared.names("new") == ["twice"]

    def test_two_handles_see_the_same_files(self, prepared: FileStore) -> None:
        """Two handles on one store share its files."""
        other = self.again(prepared)
        name = prepared.deliver(b"x")
        assert other.claim() == name
        assert prepared.claim() is None

    def test_a_claim_is_its_name_with_its_content(self, prepared: FileStore) -> None:
        """A claim equals its name and reads its content."""
        name = prepared.deliver(b"payload")
        claim = prepared.claim()
        assert claim == name
        assert isinstance(claim, Claim)
        assert claim.name == name
        assert claim.path == prepared.list("cur")[0]
        assert claim.read() == b"payload"
        with claim.open("r") as file:
            assert (file.name, file.mode) == (claim.path, "r")
            assert file.read() == "payload"

    def test_ack_removes_the_claim(self, prepared: FileStore) -> None:
        """`ack()` removes the message; a second ack is no error; a late release is."""
        prepared.deliver(b"x")
        claim = prepared.claim()
        assert claim is not None
        claim.ack()
        assert [prepared.names(folder) for folder in FOLDERS] == [[], [], [], []]
        claim.ack()  # the message is done: a second ack (or a retried one) is no error
        with pytest.raises(LeaseLost):
            claim.release()

    def test_release_gives_the_file_back_and_counts_an_attempt(self, prepared: FileStore) -> None:
        """`release()` gives the message back and records an attempt."""
        name = prepared.deliver(b"x")
        claim = prepared.claim()
        assert claim is not None
        assert claim.release() == "new"
        assert prepared.names("new") == [f"{name}:2"]  # renewed as :1, given back as :2
        assert prepared.record(name) == Record(attempts=1)
        again = prepared.claim()
        assert again == name
        again.ack()
        assert prepared.record(name) == Record()

    def test_the_last_attempt_goes_to_failed(self, prepared: FileStore) -> None:
        """The last allowed attempt sends the message to `failed/` with a reason."""
        prepared.max_attempts = 3
        name = prepared.deliver(b"poison")
        folders = []
        for _ in range(3):
            claim = prepared.claim()
            assert claim == name
            folders.append(claim.release())
        assert folders == ["new", "new", "failed"]
        assert prepared.names("failed") == [name]
        assert prepared.claim() is None
        record = prepared.record(name)
        assert record.attempts == 3
        assert "gave up after 3 attempts" in (record.reason or "")

    def test_fail_dead_letters_with_the_reason(self, prepared: FileStore) -> None:
        """`fail()` moves the message to `failed/` with its reason."""
        name = prepared.deliver(b"x")
        assert prepared.names("failed") == []
        claim = prepared.claim()
        assert claim is not None
        claim.fail("cannot parse line 3")
        assert prepared.names("failed") == [name]
        assert prepared.names("cur") == []
        assert prepared.record(name) == Record(attempts=1, reason="cannot parse line 3")
        assert prepared.open(name, "failed", "rb").read() == b"x"

    def test_a_claim_as_context_acks_on_success_and_releases_on_error(
        self, prepared: FileStore
    ) -> None:
        """A claim as a context acks on success and releases on an exception."""
        first, second, third = (prepared.deliver(b"x") for _ in range(3))
        with prepared.claim() as claim:  # type: ignore[union-attr]
            assert claim == first
        assert not prepared.exists(first, "cur")
        assert not prepared.exists(first, "new")
        with pytest.raises(RuntimeError), prepared.claim() as claim:  # type: ignore[union-attr]
            raise RuntimeError("handler crashed")
        assert prepared.exists(f"{second}:2", "new")
        assert prepared.record(second).attempts == 1
        with prepared.claim() as claim:  # type: ignore[union-attr]
            assert claim == third
            claim.fail("bad input")
        assert prepared.names("failed") == [third]

    def test_claim_waits_for_a_file(self, prepared: FileStore) -> None:
        """`claim(wait=...)` returns a file delivered while it waits."""
        other = self.again(prepared)
        timer = threading.Timer(0.2, other.deliver, args=(b"late", "late"))
        timer.start()
        try:
            assert prepared.claim(wait=60) == "late"
        finally:
            timer.cancel()
        assert prepared.claim(wait=0.05) is None

    def test_a_release_records_why_and_may_not_count(self, prepared: FileStore) -> None:
        """`release(reason)` records why the try failed, and the dead letter keeps the last
        reason; `release(attempt=False)` gives the file back without counting a try."""
        prepared.max_attempts = 2
        name = prepared.deliver(b"x")
        prepared.claim().release(attempt=False)  # type: ignore[union-attr]
        assert prepared.record(name) == Record()
        assert prepared.claim().release("exit status 3") == "new"  # type: ignore[union-attr]
        assert prepared.record(name) == Record(1, "exit status 3")
        assert prepared.claim().release("killed by SIGSEGV") == "failed"  # type: ignore[union-attr]
        assert prepared.record(name) == Record(2, "gave up after 2 attempts (killed by SIGSEGV)")

    def test_a_requeued_message_starts_afresh_and_stays_fenced(self, prepared: FileStore) -> None:
        """`requeue` moves a dead letter back to `new/` with no attempts counted, under a
        later generation: a late worker of an earlier claim can do nothing to the next."""
        name = prepared.deliver(b"x")
        late = prepared.claim()
        assert late is not None
        prepared.recover(older_than=0)
        prepared.claim().fail("bad input")  # type: ignore[union-attr]
        requeued = prepared.requeue(name)
        assert prepared.names("new") == [requeued]
        assert split_file_name(requeued)[1] > 0
        assert prepared.record(name) == Record()
        again = prepared.claim()
        assert again == name
        for step in (late.ack, late.release, late.extend):
            with pytest.raises(LeaseLost):
                step()
        again.ack()
        assert [prepared.names(folder) for folder in FOLDERS] == [[], [], [], []]
        with pytest.raises(NotFound):
            prepared.requeue(name)

    def test_recover_returns_only_expired_claims(self, prepared: FileStore) -> None:
        """`recover()` gives back only claims older than its lease."""
        name = prepared.deliver(b"x")
        assert prepared.claim() == name
        assert prepared.recover(older_than=3600) == Recovery([], [])
        assert prepared.names("cur") == [name]
        assert prepared.recover(older_than=0) == Recovery([name], [])
        # Taken over as generation 1, then given back as generation 2.
        assert prepared.names("new") == [f"{name}:2"]
        assert prepared.names("cur") == []
        assert prepared.record(name).attempts == 1

    def test_recover_dead_letters_at_max_attempts(self, prepared: FileStore) -> None:
        """`recover()` of a claim at its last attempt fails it."""
        prepared.max_attempts = 1
        name = prepared.deliver(b"x")
        prepared.claim()
        assert prepared.recover(older_than=timedelta(0)) == Recovery([], [name])
        assert prepared.names("failed") == [name]
        assert "lease expired" in (prepared.record(name).reason or "")

    def test_extend_renews_the_lease_under_the_next_generation(self, prepared: FileStore) -> None:
        """`extend()` moves the claim to its next generation and keeps it working."""
        name = prepared.deliver(b"x")
        claim = prepared.claim()
        assert claim is not None
        claimed_at = prepared.backend.info("cur", claim.file_name).changed
        claim.extend()
        assert claim == name
        assert claim.file_name == f"{name}:1"
        assert prepared.names("cur") == [f"{name}:1"]
        assert claim.path == prepared.list("cur")[0]
        assert prepared.backend.info("cur", claim.file_name).changed >= claimed_at
        assert claim.read() == b"x"
        claim.extend()
        assert prepared.names("cur") == [f"{name}:2"]
        claim.ack()
        assert [prepared.names(folder) for folder in FOLDERS] == [[], [], [], []]

    def test_a_lease_runs_from_the_claim_not_from_the_delivery(self, prepared: FileStore) -> None:
        """A message that waited in new/ is fresh once claimed: the claim's time is later."""
        name = prepared.deliver(b"x")
        delivered = prepared.backend.info("new", name).changed
        wait_for_storage_time_after(prepared.backend, delivered)
        claim = prepared.claim()
        assert claim == name
        assert prepared.backend.info("cur", claim.file_name).changed > delivered
        assert [entry.changed > delivered for entry in prepared.backend.scan("cur")] == [True]
        assert prepared.recover(older_than=3600) == Recovery([], [])

    def test_cleanup_drops_records_of_files_that_are_gone(self, prepared: FileStore) -> None:
        """`cleanup()` drops the attempt records of messages that are gone."""
        name = prepared.deliver(b"x")
        prepared.claim().release()  # type: ignore[union-attr]
        prepared.remove(f"{name}:2", "new")  # removed behind the queue's back
        assert prepared.record(name).attempts == 1
        prepared.cleanup(older_than=0)
        assert prepared.record(name) == Record()

    def test_queue_state_machine(self, prepared: FileStore) -> None:
        """Random deliver/claim/ack/release/fail/recover/cleanup steps against a model:
        after every step each message is in exactly the one place the model says."""

        class OnThisStore(QueueMachine):
            def __init__(self) -> None:
                super().__init__(prepared)

        run_state_machine_as_test(
            OnThisStore,
            settings=settings(
                max_examples=self.state_machine_examples,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.differing_executors],
            ),
        )

    def test_concurrent_claimers_get_every_file_exactly_once(self, prepared: FileStore) -> None:
        """Racing claimers get every file, each exactly once."""
        names = {prepared.deliver(b"x") for _ in range(40 * self.race_rounds // 3)}
        handles = [self.again(prepared) for _ in range(8)]

        def drain(handle: FileStore) -> list[str]:
            claimed: list[str] = []
            while (name := handle.claim()) is not None:
                claimed.append(name)
            return claimed

        results = race([partial(drain, h) for h in handles])
        claimed = [name for result in results for name in result]  # type: ignore[attr-defined]
        assert ExactlyOnce(list(names), claimed).problem() is None
        assert set(prepared.names("cur")) == names

    def test_a_late_worker_can_do_nothing_to_a_later_claim(self, prepared: FileStore) -> None:
        """Every step of a claim whose lease ran out raises `LeaseLost` and changes nothing."""
        name = prepared.deliver(b"payload")
        late = prepared.claim()
        assert late is not None
        assert prepared.recover(older_than=0).returned == [name]  # its lease ran out
        later = self.again(prepared).claim()
        assert later == name
        steps: list[Callable[[], object]] = [
            late.read,
            late.open,
            late.ack,
            late.release,
            partial(late.fail, "late"),
            late.extend,
            partial(prepared.ack, late.file_name),
        ]
        for step in steps:
            with pytest.raises(LeaseLost):
                step()
        assert prepared.record(name).attempts == 1
        assert later.read() == b"payload"
        later.extend()
        later.ack()
        assert [prepared.names(folder) for folder in FOLDERS] == [[], [], [], []]

    def test_of_a_renewal_and_a_take_over_exactly_one_wins(self, prepared: FileStore) -> None:
        """Of a racing `extend()` and `recover()` of one claim, exactly one wins."""
        worker, recoverer = self.again(prepared), self.again(prepared)
        for _ in range(self.race_rounds):
            name = prepared.deliver(b"x")
            claim = worker.claim()
            assert claim == name
            results = race([claim.extend, partial(recoverer.recover, 0)])
            returned = results[1].returned if isinstance(results[1], Recovery) else results
            if results[0] is None and returned == []:  # renewed before the recoverer looked
                claim.ack()
                continue
            assert returned == [name], results
            if results[0] is None:
                # Renewed first (as `:1`); the recoverer, which counts every claim as
                # expired here, then took over `:1` (as `:2`), never the stale `:0`.
                assert prepared.names("new") == [f"{name}:3"], results
            else:
                assert isinstance(results[0], LeaseLost), results
                assert prepared.names("new") == [f"{name}:2"], results
            with pytest.raises(LeaseLost):
                claim.ack()
            assert worker.claim() == name
            worker.ack(worker.names("cur")[0])
        assert [prepared.names(folder) for folder in FOLDERS] == [[], [], [], []]

    def test_concurrent_recoverers_give_each_claim_back_once(self, prepared: FileStore) -> None:
        """Racing recoverers give each expired claim back once, with one attempt."""
        names = {prepared.deliver(b"x") for _ in range(10)}
        while prepared.claim() is not None:
            pass
        # Leases of 2 s, expired by the wait: a claim one recoverer has just taken over is
        # fresh to the others, as it must be.
        claimed = max(entry.changed for entry in prepared.backend.scan("cur"))
        wait_for_storage_time_after(prepared.backend, claimed + 2)
        recoverers = [self.again(prepared) for _ in range(4)]
        results = race([partial(r.recover, 2) for r in recoverers])
        returned = [n for result in results for n in result.returned]  # type: ignore[attr-defined]
        assert Counter(returned) == Counter(names)
        assert all(prepared.record(name).attempts == 1 for name in names)
        assert sorted(split_file_name(n)[0] for n in prepared.names("new")) == sorted(names)
        assert prepared.names("cur") == []

    def test_a_name_delivered_again_within_the_window_is_not_published_again(
        self, prepared: FileStore
    ) -> None:
        """Within the deduplication window a name is accepted again, not published again."""
        store = FileStore(prepared.backend, dedup_window=3600)
        assert store.deliver(b"first", "job") == "job"
        assert store.deliver(b"retried", "job") == "job"  # a producer's retry: accepted
        assert store.names("new") == ["job"]
        claim = store.claim()
        assert claim is not None
        assert claim.read() == b"first"
        claim.ack()
        assert store.deliver(b"retried", "job") == "job"  # acked, but within the window
        store.cleanup(older_than=0)  # marks last for the window, whatever cleanup's age
        assert store.deliver(b"retried", "job") == "job"
        assert [store.names(folder) for folder in FOLDERS] == [[], [], [], []]
        assert prepared.deliver(b"no window", "job") == "job"  # a store without one
        assert prepared.names("new") == ["job"]

    def test_a_producer_that_died_after_its_mark_is_published_by_its_retry(
        self, prepared: FileStore
    ) -> None:
        """A delivery marks its name, then publishes. A producer that dies between the two
        leaves a mark and no message: its retry within the window must publish."""
        store = FileStore(prepared.backend, dedup_window=3600)
        store.deliver(b"other", "other")  # makes the marks' folder
        assert run(store.backend, store._queue.first_delivery("job"))  # the producer that died
        assert store.deliver(b"retried", "job") == "job"
        assert sorted(store.names("new")) == ["job", "other"]
        assert store.deliver(b"retried", "job") == "job"  # now a duplicate
        assert sorted(store.names("new")) == ["job", "other"]

    def test_concurrent_deliveries_of_one_name_in_a_window_publish_it_once(
        self, prepared: FileStore
    ) -> None:
        """Racing deliveries of one name within a window publish it once; all succeed."""
        handles = [FileStore(self.again(prepared).backend, dedup_window=3600) for _ in range(4)]
        for round_ in range(self.race_rounds):
            name = f"job-{round_}"
            results = race([partial(h.deliver, b"x", name) for h in handles])
            assert results == [name] * 4, results  # every producer is told it is delivered
            assert prepared.names("new").count(name) == 1

    def test_a_name_is_delivered_again_after_the_window(self, prepared: FileStore) -> None:
        """After the window a name is published again, and `cleanup()` drops its mark."""
        store = FileStore(prepared.backend, dedup_window=1)
        store.deliver(b"first", "job")
        store.claim().ack()  # type: ignore[union-attr]
        self._let_the_mark_expire(store, "job", window=1)
        store.deliver(b"second", "job")
        assert store.claim().read() == b"second"  # type: ignore[union-attr]
        self._let_the_mark_expire(store, "job", window=1)
        store.cleanup()
        assert not store.backend.exists(".delivered", "job")  # the expired mark is gone

    @pytest.mark.parametrize("operation", STALLABLE)
    def test_a_worker_stalled_at_any_step_loses_nothing(
        self, prepared: FileStore, operation: str
    ) -> None:
        """Pause a worker before each backend call of `operation` in turn; meanwhile its
        lease runs out, others recover and claim the file (or, for `recover`, its worker
        renews the claim); then resume it. Nothing may be lost, and no claim that the
        others hold may be touched."""
        steps = count_steps(prepared, operation)
        assert steps > 0
        for step in range(steps):
            stall_round(prepared, self.again(prepared), operation, step)

    @pytest.mark.parametrize("operation", BATCHES)
    def test_a_batch_stalled_at_any_step_loses_nothing(
        self, prepared: FileStore, operation: str
    ) -> None:
        """Pause a batch of two before each of its backend calls in turn, between two of
        its claims too; meanwhile the leases run out, others recover and claim every
        message. No message may be lost, no claim that the others hold may be touched,
        and with `atomic_moves` no message may be acked twice."""
        steps = count_batch_steps(prepared, operation)
        assert steps > 0
        for step in range(steps):
            batch_stall_round(
                prepared, self.again(prepared), operation, step, atomic_moves=self.atomic_moves
            )

    @staticmethod
    def _let_the_mark_expire(store: FileStore, name: str, window: float) -> None:
        marked = store.backend.info(".delivered", name).changed
        wait_for_storage_time_after(store.backend, marked + window)

    def test_concurrent_processes_claim_every_file_exactly_once(self, prepared: FileStore) -> None:
        """Stores unpickled in other processes share the files: each is claimed once."""
        self.require("shared_by_processes")
        names = {prepared.deliver(b"x") for _ in range(400)}
        claimed = claim_in_processes(prepared, processes=4)
        assert ExactlyOnce(list(names), claimed).problem() is None


class QueueMachine(RuleBasedStateMachine):
    """A model of where each message is; every step must keep the store in line with it."""

    MAX_ATTEMPTS = 3

    def __init__(self, store: FileStore) -> None:
        super().__init__()
        self.store = store
        store.max_attempts = self.MAX_ATTEMPTS
        for folder in ("new", "cur", "failed", "tmp"):
            for name in store.names(folder):
                store.remove(name, folder)
        self.place: dict[str, str] = {}  # name -> "new", "cur", "failed" or "done"
        self.attempts: Counter[str] = Counter()
        self.claims: dict[str, Claim] = {}

    @rule(data=st.binary(max_size=64))
    def deliver(self, data: bytes) -> None:
        self.place[self.store.deliver(data)] = "new"

    @rule()
    def claim(self) -> None:
        claim = self.store.claim()
        waiting = sorted(name for name, place in self.place.items() if place == "new")
        if claim is None:
            assert waiting == []
            return
        assert claim in waiting
        self.place[claim] = "cur"
        self.claims[claim] = claim

    @rule(choice=st.randoms())
    def ack(self, choice: Any) -> None:
        if self.claims:
            name = choice.choice(sorted(self.claims))
            self.claims.pop(name).ack()
            self.place[name] = "done"

    @rule(choice=st.randoms())
    def release(self, choice: Any) -> None:
        if self.claims:
            name = choice.choice(sorted(self.claims))
            folder = self.claims.pop(name).release()
            self.attempts[name] += 1
            expected = "failed" if self.attempts[name] >= self.MAX_ATTEMPTS else "new"
            assert folder == expected
            self.place[name] = folder

    @rule(choice=st.randoms(), reason=st.text(max_size=20))
    def fail(self, choice: Any, reason: str) -> None:
        if self.claims:
            name = choice.choice(sorted(self.claims))
            self.claims.pop(name).fail(reason)
            self.attempts[name] += 1
            self.place[name] = "failed"
            assert self.store.record(name).reason == reason

    @rule()
    def recover(self) -> None:
        recovery = self.store.recover(older_than=0)
        assert sorted(recovery.returned + recovery.failed) == sorted(self.claims)
        for name in recovery.returned + recovery.failed:
            self.attempts[name] += 1
            self.place[name] = "new" if name in recovery.returned else "failed"
        self.claims.clear()

    @rule()
    def cleanup(self) -> None:
        assert self.store.cleanup(older_than=0) == []

    @invariant()
    def every_message_is_in_exactly_one_place(self) -> None:
        for folder in ("new", "cur", "failed"):
            expected = sorted(n for n, place in self.place.items() if place == folder)
            found = sorted(split_file_name(name)[0] for name in self.store.names(folder))
            assert found == expected, folder
        assert self.store.names("tmp") == []
        for name, count in self.attempts.items():
            if self.place[name] != "done":
                assert self.store.record(name).attempts == count
