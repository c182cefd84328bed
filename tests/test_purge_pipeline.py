"""The purge pipeline without a real store: bounded memory, retries, throttling, the limiter."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

import pytest

from purge.pipeline import (
    AdaptiveConcurrency,
    DeleteRetryPolicy,
    StoreContractError,
    manifest_line,
    purge_prefix,
)
from purge.stores.base import DeleteResult, StagingStore, StoredObject

FAST_RETRIES = DeleteRetryPolicy(max_attempts=8, base_delay=0.001, max_delay=0.01)
PREFIX = "runs/r1/"


class GeneratedStore(StagingStore):
    """A listing generated on the fly, and a delete that only counts: no object is ever stored.

    `deleted_times[i]` counts the deletes of entry i, in a bytearray (one byte an entry) so
    that the bookkeeping itself weighs a megabyte, not the hundreds a set of keys would.
    """

    uri = "mem://generated/"

    def __init__(
        self,
        count: int,
        *,
        concurrency: int = 8,
        outcome: Callable[[int, Sequence[StoredObject]], DeleteResult | None] | None = None,
        live: LiveEntries | None = None,
    ) -> None:
        self.count = count
        self.live = live
        self.delete_concurrency = concurrency
        self.deleted_times = bytearray(count)
        self.calls = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self._outcome = outcome
        self._lock = threading.Lock()

    def list(self, prefix: str) -> Iterator[StoredObject]:
        assert prefix == PREFIX
        deleted = self.deleted_times
        make = StoredObject if self.live is None else self.live.entry
        for number in range(self.count):
            if not deleted[number]:
                yield make(key=f"{PREFIX}{number:08d}", size=3)

    def delete(self, objects: Sequence[StoredObject]) -> DeleteResult:
        with self._lock:
            self.calls += 1
            call = self.calls
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self._outcome is not None:
                result = self._outcome(call, objects)
                if result is not None:
                    self._count(result.deleted)
                    return result
            self._count(objects)
            return DeleteResult(deleted=list(objects), failed=[])
        finally:
            with self._lock:
                self.in_flight -= 1

    def _count(self, objects: Sequence[StoredObject]) -> None:
        with self._lock:
            for obj in objects:
                self.deleted_times[int(obj.key[len(PREFIX) :])] += 1

    def settings(self) -> dict[str, str]:
        return {"kind": "generated"}

    def open_write(self, key: str) -> AbstractContextManager[BinaryIO]:
        raise NotImplementedError

    def open_read(self, key: str) -> AbstractContextManager[BinaryIO]:
        raise NotImplementedError

    def local_path(self, key: str) -> AbstractContextManager[Path]:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError


def expected_manifest(count: int) -> str:
    digest = hashlib.sha256()
    for number in range(count):
        digest.update(manifest_line(StoredObject(f"{PREFIX}{number:08d}", 3)))
    return digest.hexdigest()


# --- bounded memory -------------------------------------------------------------------------


class LiveEntries:
    """How many listing entries are alive at once, counted exactly.

    Each entry the listing makes is counted when made and uncounted when CPython frees it, that
    is when the last reference to it is dropped, in whichever thread. Entries are only ever made
    by the listing, so the count peaks at the moment one is made, which is when `peak` is taken:
    the most entries the pipeline held at any one time. Unlike the process's resident size, it
    does not depend on what else the machine (or the allocator) is doing.
    """

    def __init__(self) -> None:
        self.made = 0
        self.peak = 0
        # One byte appended per freed entry; bytearray.append is one C call, so appends from
        # the pipeline's threads never race.
        freed = self._freed = bytearray()

        class Entry(StoredObject):
            def __del__(self) -> None:
                freed.append(1)

        self._entry_type = Entry

    @property
    def alive(self) -> int:
        return self.made - len(self._freed)

    def entry(self, key: str, size: int) -> StoredObject:
        obj = self._entry_type(key=key, size=size)
        self.made += 1
        self.peak = max(self.peak, self.alive)
        return obj


# The pipeline keeps at most 2 * concurrency batches listed and not yet deleted (see the next
# tests); besides those, a few batches are still referenced for a moment (the one being listed,
# the one just handed over, the one just settled). 17,000 is what a run shows; holding the
# listing would show 1,000,000.
BOUND = (2 * 8 + 4) * 1000


def test_a_million_entries_pass_through_in_bounded_memory() -> None:
    live = LiveEntries()
    store = GeneratedStore(1_000_000, live=live)
    progress: list[int] = []
    receipt = purge_prefix(
        store, PREFIX, receipt_id="big", on_progress=progress.append, batch_size=1000
    )
    print(f"at most {live.peak:,} of 1,000,000 listing entries alive at once")

    assert live.made == 1_000_000  # the measure saw every entry (the final listing is empty)
    assert live.peak <= BOUND, f"{live.peak:,} entries alive at once"
    assert live.alive == 0  # nothing kept once the purge returned
    assert store.deleted_times.count(1) == 1_000_000  # every entry deleted exactly once
    assert receipt.objects_deleted == 1_000_000
    assert receipt.bytes_deleted == 3_000_000
    assert receipt.delete_calls == store.calls == 1000
    assert receipt.verified_empty
    assert receipt.manifest_sha256 == expected_manifest(1_000_000)
    assert progress == sorted(progress) and progress[-1] == 1_000_000
    assert store.peak_in_flight <= 8


def test_holding_the_listing_would_show_in_the_measure() -> None:
    """The yardstick: the same entries kept in a list are all alive at once, so the measure
    above would see a pipeline that held on to its listing; and entries let go are uncounted."""
    live = LiveEntries()
    store = GeneratedStore(1_000_000, live=live)
    held = list(store.list(PREFIX))
    assert len(held) == 1_000_000
    assert live.peak == live.alive == 1_000_000 > BOUND
    del held
    assert live.alive == 0


def test_the_lister_waits_for_deletes_instead_of_running_ahead() -> None:
    listed_ahead: list[int] = []

    class SlowSink(GeneratedStore):
        def __init__(self) -> None:
            super().__init__(5000, concurrency=2, outcome=self.slowly)
            self.listed = 0

        def list(self, prefix: str) -> Iterator[StoredObject]:
            for obj in super().list(prefix):
                self.listed += 1
                yield obj

        def slowly(self, call: int, objects: Sequence[StoredObject]) -> None:
            time.sleep(0.005)
            listed_ahead.append(self.listed - sum(self.deleted_times))

    store = SlowSink()
    receipt = purge_prefix(store, PREFIX, receipt_id="r", batch_size=100)

    assert receipt.verified_empty
    assert store.peak_in_flight == 2  # deletes do overlap, up to the concurrency
    # At most 2 * concurrency batches are listed and not yet deleted.
    assert max(listed_ahead) <= 4 * 100


# --- retries and throttling ---------------------------------------------------------------


def test_throttled_batches_are_retried_and_lower_concurrency() -> None:
    # The first three calls are in flight together, then all answer "slow down".
    burst = threading.Barrier(3, timeout=10)

    def throttle_first_calls(call: int, objects: Sequence[StoredObject]) -> DeleteResult | None:
        if call <= 3:
            burst.wait()
            return DeleteResult(
                deleted=[], failed=[], retry=[(o, "SlowDown") for o in objects], throttled=True
            )
        return None

    store = GeneratedStore(20_000, outcome=throttle_first_calls)
    limiter = AdaptiveConcurrency(8)

    receipt = purge_prefix(
        store, PREFIX, receipt_id="r", retry_policy=FAST_RETRIES, limiter=limiter
    )

    assert receipt.verified_empty
    assert store.deleted_times.count(1) == 20_000
    assert receipt.throttles == 3
    assert receipt.retries == 3000
    assert receipt.delete_calls == 23
    assert limiter.throttles == 3
    # One burst of throttles halves the limit once, not three times (8 -> 1), then successes
    # bring it back up.
    assert limiter.lowest == 4
    assert list(limiter.history)[:2] == [8, 4]
    assert limiter.limit > 4


def test_some_objects_retried_others_deleted_in_the_same_call() -> None:
    def first_half_transient(call: int, objects: Sequence[StoredObject]) -> DeleteResult | None:
        if call == 1:
            half = len(objects) // 2
            return DeleteResult(
                deleted=list(objects[half:]),
                failed=[],
                retry=[(o, "InternalError: try again") for o in objects[:half]],
            )
        return None

    store = GeneratedStore(100, concurrency=1, outcome=first_half_transient)
    receipt = purge_prefix(store, PREFIX, receipt_id="r", retry_policy=FAST_RETRIES)
    assert receipt.verified_empty
    assert receipt.retries == 50
    assert store.deleted_times.count(1) == 100


@pytest.mark.parametrize("concurrency", [1, 4])
def test_objects_that_keep_failing_transiently_are_reported(concurrency: int) -> None:
    def never_for_seven(call: int, objects: Sequence[StoredObject]) -> DeleteResult | None:
        stuck = [o for o in objects if o.key.endswith("7")]
        rest = [o for o in objects if not o.key.endswith("7")]
        return DeleteResult(deleted=rest, failed=[], retry=[(o, "SlowDown: busy") for o in stuck])

    store = GeneratedStore(100, concurrency=concurrency, outcome=never_for_seven)
    policy = DeleteRetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.002)

    receipt = purge_prefix(store, PREFIX, receipt_id="r", batch_size=30, retry_policy=policy)

    assert receipt.objects_failed == 10
    assert receipt.failures[0] == f"{PREFIX}00000007: gave up after 3 attempts: SlowDown: busy"
    assert receipt.failures == sorted(receipt.failures)
    assert receipt.retries == 20  # each stuck object sent 3 times: 2 retries
    assert receipt.remaining == 10
    assert not receipt.verified_empty


def test_an_object_the_store_gives_no_outcome_for_is_a_failure() -> None:
    def forget_one(call: int, objects: Sequence[StoredObject]) -> DeleteResult | None:
        return DeleteResult(deleted=list(objects[1:]), failed=[])

    store = GeneratedStore(10, outcome=forget_one)
    receipt = purge_prefix(store, PREFIX, receipt_id="r")
    assert receipt.failures == [f"{PREFIX}00000000: the store reported no outcome"]
    assert not receipt.verified_empty


def test_a_store_error_stops_the_purge_and_is_raised() -> None:
    def explode_on_third(call: int, objects: Sequence[StoredObject]) -> DeleteResult | None:
        if call == 3:
            raise OSError("disk on fire")
        return None

    store = GeneratedStore(50_000, concurrency=2, outcome=explode_on_third)
    with pytest.raises(OSError, match="disk on fire"):
        purge_prefix(store, PREFIX, receipt_id="r", batch_size=100)
    # It stopped early, with nothing left running.
    assert store.calls < 50
    assert store.in_flight == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("sluice-purge")]


def test_a_broken_listing_stops_the_concurrent_pipeline() -> None:
    class Unsorted(GeneratedStore):
        def list(self, prefix: str) -> Iterator[StoredObject]:
            yield from super().list(prefix)
            yield StoredObject(f"{PREFIX}00000000", 3)

    store = Unsorted(2500)
    with pytest.raises(StoreContractError, match="order"):
        purge_prefix(store, PREFIX, receipt_id="r", batch_size=100)
    assert store.in_flight == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("sluice-purge")]


def test_progress_is_reported_in_the_calling_thread() -> None:
    caller = threading.get_ident()
    threads: set[int] = set()

    def on_progress(count: int) -> None:
        threads.add(threading.get_ident())

    purge_prefix(GeneratedStore(5000), PREFIX, receipt_id="r", on_progress=on_progress)
    assert threads == {caller}


# --- the limiter ------------------------------------------------------------------------------


def test_limiter_halves_on_throttle_and_never_goes_below_one() -> None:
    limiter = AdaptiveConcurrency(8)
    assert limiter.limit == 8
    limits = []
    for _ in range(5):
        limiter.on_throttle()
        limits.append(limiter.limit)
    assert limits == [4, 2, 1, 1, 1]
    assert limiter.lowest == 1
    assert limiter.throttles == 5


def test_limiter_grows_by_one_after_a_limits_worth_of_successes_up_to_the_maximum() -> None:
    limiter = AdaptiveConcurrency(4, initial=1)
    seen = []
    for _ in range(20):
        limiter.on_success()
        seen.append(limiter.limit)
    # 1 success at 1 -> 2; 2 at 2 -> 3; 3 at 3 -> 4; then capped.
    assert seen[:6] == [2, 2, 3, 3, 3, 4]
    assert max(seen) == 4 == limiter.limit
    assert list(limiter.history) == [1, 2, 3, 4]


def test_limiter_ignores_throttles_from_before_its_last_decrease() -> None:
    limiter = AdaptiveConcurrency(8)
    sent_in = limiter.generation
    assert limiter.on_throttle(sent_in) is True
    assert limiter.on_throttle(sent_in) is False  # same burst: already answered
    assert limiter.limit == 4
    assert limiter.on_throttle(limiter.generation) is True
    assert limiter.limit == 2


def test_limiter_refuses_a_maximum_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        AdaptiveConcurrency(0)
    assert AdaptiveConcurrency(3, initial=10).limit == 3


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    import random

    policy = DeleteRetryPolicy(base_delay=0.1, max_delay=1.0)
    rng = random.Random(7)
    for attempt, nominal in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (40, 1.0)]:
        delays = [policy.backoff(attempt, rng) for _ in range(50)]
        assert all(nominal / 2 <= d <= nominal for d in delays)
        assert len(set(delays)) > 1
