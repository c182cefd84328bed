"""Purge one prefix of a staging store, verify it is empty, and return the receipt.

Deletion is a bounded pipeline. The calling thread lists the prefix, hashes the manifest in
listing order and cuts the listing into batches; a dispatcher thread hands batches to a small
pool of delete threads, as many at once as an adaptive limiter allows; transient failures are
retried with jittered exponential backoff. At most `2 * max_concurrency` batches are listed
and not yet finished at any moment (queued, in flight or waiting to retry): the lister waits
for one to finish before it lists the next, so memory is bounded by that many batches however
many objects the prefix holds.

A store whose `delete_concurrency` is 1 (the local disk) skips the threads: each batch is
deleted in the calling thread as soon as it is listed, with the same retry rules, in calls of
at most the store's `delete_batch_size` objects (the local store: 100, halved while a call
takes longer than half a second).

Progress (`on_progress`, which an activity heartbeats so that a resumed purge can count what
an interrupted attempt deleted) is reported after every serial delete call, and by the
concurrent pipeline whenever the calling thread wakes: after each listed batch and at least
every quarter of a second while deletes are in flight.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from purge.errors import PurgeError
from purge.receipts import PurgeReceipt
from purge.stores.base import DeleteResult, StagingStore, StoredObject, normalize_prefix

# Failures are listed in the receipt, which travels through Temporal histories with their
# payload size limit; the total is always counted in objects_failed.
MAX_LISTED_FAILURES = 100

# How often the calling thread, while it waits for deletes, passes progress to on_progress.
_PROGRESS_INTERVAL = 0.25

# A serial delete call of a store with a `delete_batch_size` should take no longer than this: a
# slower call halves the size of the next one, a call under a quarter of it doubles it back.
_SERIAL_CALL_SECONDS = 0.5


class StoreContractError(PurgeError, RuntimeError):
    """A store listing broke its contract (order, or an object outside the prefix).

    Purging stops rather than continuing, because the manifest hash would be wrong or an
    object outside the run's prefix could be deleted.
    """

    kind = "StoreContract"


@dataclass(frozen=True)
class DeleteRetryPolicy:
    """How objects whose delete failed transiently are retried before they count as failed."""

    max_attempts: int = 8
    """Delete calls per object at most, the first included."""
    base_delay: float = 0.1
    max_delay: float = 10.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after the `attempt`-th failed call (1-based).

        Exponential, and half of it random: throttled callers spread out instead of coming
        back in step, yet each still waits at least half the nominal delay.
        """
        ceiling = min(self.max_delay, self.base_delay * 2 ** min(max(attempt, 1) - 1, 30))
        return float(ceiling / 2 + rng.uniform(0, ceiling / 2))


class AdaptiveConcurrency:
    """How many delete requests may be in flight: additive increase, multiplicative decrease.

    Halving on a throttle and adding one after a limit's worth of successes is how TCP shares
    a link. It lets a purge settle on the rate the service accepts (S3 allows 3,500 DELETEs per
    second per prefix, and each key of a DeleteObjects counts) instead of storming it with
    retries. Only the dispatcher thread calls it, so it takes no lock.
    """

    def __init__(self, maximum: int = 8, *, initial: int | None = None) -> None:
        if maximum < 1:
            raise ValueError(f"maximum concurrency must be at least 1, got {maximum}")
        self.maximum = maximum
        self.limit = maximum if initial is None else max(1, min(initial, maximum))
        self.lowest = self.limit
        """The lowest limit reached, so a caller can see that throttling slowed the purge."""
        self.history: deque[int] = deque([self.limit], maxlen=1000)
        """Every limit in force, oldest first (the last 1000)."""
        self.generation = 0
        """Counts decreases; a request remembers the generation it was sent in."""
        self.throttles = 0
        self._successes = 0

    def on_throttle(self, generation: int | None = None) -> bool:
        """Halve the limit, never below 1; True if this throttle was acted on.

        A throttle answering a request sent before the latest decrease is stale: that decrease
        already answered the same overload. It is ignored, or one burst of 8 throttled
        requests would cut the limit from 8 to 1 at once.
        """
        self.throttles += 1
        if generation is not None and generation != self.generation:
            return False
        self.generation += 1
        self._successes = 0
        self._set(max(1, self.limit // 2))
        return True

    def on_success(self) -> None:
        """Add one to the limit, up to the maximum, after a limit's worth of successes."""
        self._successes += 1
        if self._successes >= self.limit and self.limit < self.maximum:
            self._successes = 0
            self._set(self.limit + 1)

    def _set(self, limit: int) -> None:
        if limit != self.limit:
            self.limit = limit
            self.lowest = min(self.lowest, limit)
            self.history.append(limit)


def purge_prefix(
    store: StagingStore,
    prefix: str,
    *,
    receipt_id: str,
    dry_run: bool = False,
    batch_size: int = 1000,
    on_progress: Callable[[int], None] | None = None,
    max_concurrency: int | None = None,
    retry_policy: DeleteRetryPolicy | None = None,
    limiter: AdaptiveConcurrency | None = None,
) -> PurgeReceipt:
    """Delete every object and version under the prefix, then prove by listing that none is left.

    The listing is consumed lazily in batches and the manifest hashed as it goes, so memory
    stays bounded however many objects a run staged. `on_progress` receives the number of
    objects deleted so far, in the calling thread (an activity heartbeats with it). A dry run
    lists, counts and hashes, deletes nothing and is never verified empty.

    `max_concurrency` defaults to the store's `delete_concurrency`; a `limiter` passed in sets
    it instead (its maximum) and can be inspected afterwards.
    """
    normalized = normalize_prefix(prefix)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if limiter is None:
        limiter = AdaptiveConcurrency(max_concurrency or store.delete_concurrency)
    policy = retry_policy or DeleteRetryPolicy()
    started_at = datetime.now(UTC)
    manifest = hashlib.sha256()
    tally = _Tally(policy)
    batches = _hashed_batches(_checked(store.list(normalized), normalized), batch_size, manifest)

    if dry_run:
        for batch in batches:
            tally.count_deleted(batch)
            if on_progress is not None:
                on_progress(tally.objects_deleted)
    elif limiter.maximum == 1:
        _delete_serially(
            batches, store.delete, tally, limiter, policy, on_progress, store.delete_batch_size
        )
    else:
        _delete_concurrently(batches, store.delete, tally, limiter, policy, on_progress)

    if dry_run:
        remaining = tally.objects_deleted
    else:
        store.prune(normalized)
        remaining = sum(1 for _ in store.list(normalized))

    finished_at = datetime.now(UTC)
    return PurgeReceipt(
        receipt_id=receipt_id,
        target=store.uri + normalized,
        dry_run=dry_run,
        started_at=started_at,
        finished_at=finished_at,
        objects_deleted=tally.objects_deleted,
        versions_deleted=tally.versions_deleted,
        bytes_deleted=tally.bytes_deleted,
        manifest_sha256=manifest.hexdigest(),
        remaining=remaining,
        verified_empty=not dry_run and remaining == 0 and tally.objects_failed == 0,
        failures=tally.listed_failures(),
        objects_failed=tally.objects_failed,
        store_settings=store.settings(),
        delete_calls=tally.delete_calls,
        retries=tally.retries,
        throttles=tally.throttles,
        recoverable_until=None
        if dry_run or tally.objects_deleted == 0
        else _recoverable_until(store, finished_at),
    )


def _recoverable_until(store: StagingStore, deleted_at: datetime) -> datetime | None:
    try:
        return store.recoverable_until(deleted_at)
    except Exception:
        # Unreadable store settings: store_settings already says "unknown"; the deletes stand.
        return None


def manifest_line(obj: StoredObject) -> bytes:
    """One manifest line, "key<TAB>version_id<NEWLINE>", as hashed into the receipt."""
    # surrogateescape keeps file names that are not valid UTF-8 hashable, as their raw bytes.
    return f"{obj.key}\t{obj.version_id or ''}\n".encode("utf-8", "surrogateescape")


def _checked(listing: Iterator[StoredObject], prefix: str) -> Iterator[StoredObject]:
    """Pass the listing through, enforcing the order the running hash relies on and the prefix."""
    previous: tuple[str, str] | None = None
    for obj in listing:
        if not obj.key.startswith(prefix):
            raise StoreContractError(f"listing of {prefix!r} yielded {obj.key!r}, outside it")
        current = (obj.key, obj.version_id or "")
        if previous is not None and current <= previous:
            raise StoreContractError(
                f"listing of {prefix!r} is not in strictly ascending (key, version) order: "
                f"{current!r} came after {previous!r}"
            )
        previous = current
        yield obj


def _hashed_batches(
    listing: Iterator[StoredObject], batch_size: int, manifest: Any
) -> Iterator[list[StoredObject]]:
    """Cut the listing into batches, hashing each object in listing order as it is cut."""
    while batch := list(itertools.islice(listing, batch_size)):
        for obj in batch:
            manifest.update(manifest_line(obj))
        yield batch


# --- accounting -----------------------------------------------------------------------------


@dataclass
class _Job:
    """One listed batch, until every object in it is deleted or has definitively failed."""

    objects: Sequence[StoredObject]
    attempts: int = 0
    generation: int = 0
    """The limiter's generation when the latest call was sent."""


class _Tally:
    """What the purge did so far. Written by one thread at a time; counters are read live."""

    def __init__(self, policy: DeleteRetryPolicy) -> None:
        self.policy = policy
        self.objects_deleted = self.versions_deleted = self.bytes_deleted = 0
        self.objects_failed = self.delete_calls = self.retries = self.throttles = 0
        self._failures: list[tuple[tuple[str, str], str]] = []

    def count_deleted(self, objects: Sequence[StoredObject]) -> None:
        self.objects_deleted += len(objects)
        self.versions_deleted += sum(1 for obj in objects if obj.version_id is not None)
        self.bytes_deleted += sum(obj.size for obj in objects)

    def count_failed(self, obj: StoredObject, reason: str) -> None:
        self.objects_failed += 1
        self._failures.append(((obj.key, obj.version_id or ""), reason))
        if len(self._failures) >= 4 * MAX_LISTED_FAILURES:
            self._failures = heapq.nsmallest(MAX_LISTED_FAILURES, self._failures)

    def listed_failures(self) -> list[str]:
        """The failures of the first objects in key order, so the receipt does not depend on
        which delete thread finished first."""
        return [
            f"{key} (version {version}): {reason}" if version else f"{key}: {reason}"
            for (key, version), reason in heapq.nsmallest(MAX_LISTED_FAILURES, self._failures)
        ]

    def settle(self, job: _Job, result: DeleteResult) -> bool:
        """Account one delete call of the job; True if some of its objects are to be retried.

        An object the store gave no outcome for counts as failed: a purge never assumes.
        """
        self.delete_calls += 1
        job.attempts += 1
        if result.throttled:
            self.throttles += 1
        self.count_deleted(result.deleted)
        for obj, reason in result.failed:
            self.count_failed(obj, reason)
        reported = len(result.deleted) + len(result.failed) + len(result.retry)
        if reported < len(job.objects):
            seen = {*result.deleted, *(obj for obj, _ in result.failed)}
            seen.update(obj for obj, _ in result.retry)
            for obj in job.objects:
                if obj not in seen:
                    self.count_failed(obj, "the store reported no outcome")
        if not result.retry:
            return False
        if job.attempts >= self.policy.max_attempts:
            for obj, reason in result.retry:
                self.count_failed(obj, f"gave up after {job.attempts} attempts: {reason}")
            return False
        self.retries += len(result.retry)
        job.objects = [obj for obj, _ in result.retry]
        return True


# --- the two ways of running deletes ------------------------------------------------------

_Delete = Callable[[Sequence[StoredObject]], DeleteResult]


def _delete_serially(
    batches: Iterator[list[StoredObject]],
    delete: _Delete,
    tally: _Tally,
    limiter: AdaptiveConcurrency,
    policy: DeleteRetryPolicy,
    on_progress: Callable[[int], None] | None,
    call_size: int | None = None,
) -> None:
    """Each batch is deleted in the calling thread before the next one is listed, in calls of
    at most `call_size` objects (adapted to the time a call takes), progress after each call."""
    rng = random.Random()
    size = call_size
    for batch in batches:
        start = 0
        while start < len(batch):
            piece = batch if size is None else batch[start : start + size]
            start += len(piece)
            job = _Job(piece)
            spent = 0.0
            while True:
                began = time.monotonic()
                result = delete(job.objects)
                spent += time.monotonic() - began
                again = tally.settle(job, result)
                if result.throttled:
                    limiter.on_throttle()
                else:
                    limiter.on_success()
                if not again:
                    break
                time.sleep(policy.backoff(job.attempts, rng))
            if size is not None and call_size is not None:
                if spent > _SERIAL_CALL_SECONDS:
                    size = max(1, size // 2)
                elif spent < _SERIAL_CALL_SECONDS / 4:
                    size = min(call_size, size * 2)
            if on_progress is not None:
                on_progress(tally.objects_deleted)


def _delete_concurrently(
    batches: Iterator[list[StoredObject]],
    delete: _Delete,
    tally: _Tally,
    limiter: AdaptiveConcurrency,
    policy: DeleteRetryPolicy,
    on_progress: Callable[[int], None] | None,
) -> None:
    """List in the calling thread, delete in the dispatcher's pool, report progress here."""
    dispatcher = _Dispatcher(delete, tally, limiter, policy)
    reported = -1

    def report() -> None:
        nonlocal reported
        if on_progress is not None and tally.objects_deleted != reported:
            reported = tally.objects_deleted
            on_progress(reported)

    dispatcher.start()
    try:
        while True:
            # A permit per batch listed and not finished: this wait is what bounds memory.
            while not dispatcher.permits.acquire(timeout=_PROGRESS_INTERVAL):
                report()
                if not dispatcher.is_alive():
                    break
            if not dispatcher.is_alive():
                break
            batch = next(batches, None)
            if batch is None:
                break
            dispatcher.events.put((_BATCH, batch))
            report()
    except BaseException:
        # Listing failed (a broken store contract) or we were interrupted: deletes in flight
        # finish, nothing new is sent, and the error goes up.
        dispatcher.events.put((_ABORT, None))
        dispatcher.join()
        raise
    dispatcher.events.put((_END, None))
    while dispatcher.is_alive():
        dispatcher.join(_PROGRESS_INTERVAL)
        report()
    if dispatcher.error is not None:
        raise dispatcher.error
    report()


_BATCH, _DONE, _END, _ABORT = "batch", "done", "end", "abort"


class _Dispatcher:
    """Sends batches to the delete pool as the limiter allows, and retries what must be.

    It waits on one queue of events (a batch listed, a delete done, the listing ended), with a
    timeout for the next retry or the end of a throttle pause, so it never polls.
    """

    def __init__(
        self,
        delete: _Delete,
        tally: _Tally,
        limiter: AdaptiveConcurrency,
        policy: DeleteRetryPolicy,
    ) -> None:
        self._thread = threading.Thread(target=self._run, name="sluice-purge-dispatcher")
        self._delete = delete
        self._tally = tally
        self._limiter = limiter
        self._policy = policy
        self._rng = random.Random()
        self.events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        # Twice the concurrency keeps a listed batch ready for every slot the limiter opens.
        self.permits = threading.Semaphore(2 * limiter.maximum)
        self.error: BaseException | None = None
        self._fresh: deque[_Job] = deque()
        self._due: deque[_Job] = deque()
        self._waiting: list[tuple[float, int, _Job]] = []
        self._sequence = itertools.count()
        self._in_flight = 0
        self._open = 0  # jobs received and not finished
        self._paused_until = 0.0
        self._backoff_level = 0
        self._aborted = False

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            with ThreadPoolExecutor(
                max_workers=self._limiter.maximum, thread_name_prefix="sluice-purge-delete"
            ) as pool:
                self._loop(pool)
        except BaseException as exc:  # handed to the calling thread, which raises it
            self.error = exc

    def _loop(self, pool: ThreadPoolExecutor) -> None:
        listing_open = True
        while listing_open or self._open:
            now = time.monotonic()
            while self._waiting and self._waiting[0][0] <= now:
                self._due.append(heapq.heappop(self._waiting)[2])
            self._dispatch(pool, now)
            try:
                kind, payload = self.events.get(timeout=self._timeout(now))
            except queue.Empty:
                continue
            if kind == _BATCH:
                self._fresh.append(_Job(payload))
                self._open += 1
            elif kind == _DONE:
                job, future = payload
                self._in_flight -= 1
                self._settle(job, future.result())
            elif kind == _END:
                listing_open = False
            elif kind == _ABORT:
                listing_open, self._aborted = False, True
                self._open -= len(self._fresh) + len(self._due) + len(self._waiting)
                self._fresh.clear()
                self._due.clear()
                self._waiting.clear()

    def _dispatch(self, pool: ThreadPoolExecutor, now: float) -> None:
        while self._in_flight < self._limiter.limit and now >= self._paused_until:
            if self._due:
                job = self._due.popleft()
            elif self._fresh:
                job = self._fresh.popleft()
            else:
                return
            job.generation = self._limiter.generation
            future = pool.submit(self._delete, job.objects)
            future.add_done_callback(self._completion_callback(job))
            self._in_flight += 1

    def _completion_callback(self, job: _Job) -> Callable[[Future[DeleteResult]], None]:
        return lambda future: self.events.put((_DONE, (job, future)))

    def _timeout(self, now: float) -> float | None:
        deadlines = []
        if self._waiting:
            deadlines.append(self._waiting[0][0])
        if (self._due or self._fresh) and self._paused_until > now:
            deadlines.append(self._paused_until)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _settle(self, job: _Job, result: DeleteResult) -> None:
        now = time.monotonic()
        again = self._tally.settle(job, result)
        if result.throttled:
            if self._limiter.on_throttle(job.generation):
                self._backoff_level += 1
            # Everyone waits, not only the throttled batch: the service asked for less load.
            pause = self._policy.backoff(self._backoff_level, self._rng)
            self._paused_until = max(self._paused_until, now + pause)
        else:
            self._limiter.on_success()
            self._backoff_level = 0
        if again and not self._aborted:
            ready_at = now + self._policy.backoff(job.attempts, self._rng)
            heapq.heappush(self._waiting, (ready_at, next(self._sequence), job))
        else:
            self._open -= 1
            self.permits.release()
