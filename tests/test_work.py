"""`filespool work`'s batches: claims taken for all idle workers at once, acks combined."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from filespool import FileStore, LeaseLost
from filespool.queue import Claim
from filespool.work import _Batches


class _SpyStore(FileStore):
    """Records the batches of `claim_many` and `ack_many`; `ack_many` can be held."""

    def __init__(self) -> None:
        super().__init__(f"memory://work-{uuid.uuid4().hex}")
        self.claim_batches: list[int] = []
        self.ack_batches: list[list[str]] = []
        self.acking = threading.Event()
        self.hold = threading.Event()
        self.hold.set()

    def claim_many(self, count: int, wait: float | None = None) -> list[Claim]:
        self.claim_batches.append(count)
        return super().claim_many(count, wait)

    def ack_many(self, claims: Any) -> list[Claim]:
        batch = list(claims)
        self.ack_batches.append(sorted(batch))
        self.acking.set()
        assert self.hold.wait(30)
        return super().ack_many(batch)


@pytest.fixture
def store() -> _SpyStore:
    spy = _SpyStore()
    spy.prepare()
    return spy


def test_one_request_takes_the_claims_of_every_idle_worker(store: _SpyStore) -> None:
    names = [store.deliver(str(i)) for i in range(5)]
    batches = _Batches(store, idle=lambda: 3)
    taken = [batches.claim() for _ in range(3)]
    assert store.claim_batches == [3]
    assert taken == names[:3]
    assert batches.untouched() == []
    batches.claim()
    assert store.claim_batches == [3, 3]
    assert batches.untouched() == [names[4]]


def test_acks_finishing_during_an_ack_are_made_together_after_it(store: _SpyStore) -> None:
    """While one worker's ack is under way, two more finish: both are acked in the next
    batch, by whichever of them gets there first, and each learns its own outcome."""
    for i in range(3):
        store.deliver(str(i))
    batches = _Batches(store, idle=lambda: 3)
    claims = [batches.claim() for _ in range(3)]
    first, second, third = [claim for claim in claims if claim is not None]  # all three
    store.hold.clear()
    errors: list[BaseException] = []

    def ack(claim: Claim) -> None:
        try:
            batches.ack(claim)
        except BaseException as error:
            errors.append(error)

    leader = threading.Thread(target=ack, args=(first,))
    leader.start()
    assert store.acking.wait(30)
    followers = [threading.Thread(target=ack, args=(claim,)) for claim in (second, third)]
    for thread in followers:
        thread.start()
    while len(batches._to_ack) < 2:  # both wait behind the ack under way
        threading.Event().wait(0.01)
    store.hold.set()
    for thread in (leader, *followers):
        thread.join(30)
    assert errors == []
    assert store.ack_batches == [[first], sorted([second, third])]
    assert store.names("cur") == []


def test_a_lost_lease_in_a_combined_ack_is_its_own_workers(store: _SpyStore) -> None:
    store.deliver("stale")
    batches = _Batches(store, idle=lambda: 1)
    stale = batches.claim()
    assert stale is not None
    store.recover(older_than=0)
    with pytest.raises(LeaseLost):
        batches.ack(stale)
    assert store.names("new") != []
