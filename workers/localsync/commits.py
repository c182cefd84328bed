"""Commit ordering: which staged batches a STATE covers, and the thread that commits them.

A commit loads batches and upserts the states that cover them in one transaction, so a crash
never loads a batch twice and never records a state whose records are missing. The rules below
decide what goes into each commit. They are pure functions of the run's streams and the states
the connector emitted; the engine applies them (engine.py) and the destination carries them out.

- A STREAM state covers its own stream's pending records only: another stream's pending
  records wait for a state of theirs, or a crash would load them without one and the next run
  would load them again. A GLOBAL or LEGACY state covers every stream; the final commit takes
  everything left.
- A replaced stream (overwrite, or a reset) loads into a run-scoped table that replaces the live
  one at the end: its state is held back and committed with that table, in the final commit.
  When every stream of the run is replaced, so is a GLOBAL or LEGACY state.
- A reset forgets the committed state of the streams it ran, and GLOBAL / LEGACY state only when
  it ran them all; other streams keep theirs. A state the run emitted again is replaced, not
  forgotten.

States are keyed as the destination keeps them (``connectors.protocol.state_key``): one per
stream (``stream:<namespace>:<name>``), or one GLOBAL / LEGACY state.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workers.connectors.protocol import is_stream_state_key, state_key

State = dict[str, Any]


# -- the rules ----------------------------------------------------------------------------------


def covers_every_stream(state_keys: Iterable[str]) -> bool:
    """Whether these states cover every stream's records: a GLOBAL or LEGACY state does."""
    return any(not is_stream_state_key(key) for key in state_keys)


def covered_streams(
    stream_keys: Mapping[str, str], state_keys: Collection[str], *, final: bool
) -> list[str]:
    """The streams (ids, in the run's order) whose pending records a commit of these states
    loads. ``stream_keys``: each stream of the run's own state key, by stream id."""
    every = final or covers_every_stream(state_keys)
    return [sid for sid, key in stream_keys.items() if every or key in state_keys]


def held_until_the_end(key: str, stream_keys: Mapping[str, str], replaced: Collection[str]) -> bool:
    """Whether a state waits for the run's final commit: a replaced stream's state is committed
    with its table; when every stream is replaced (a reset), so is a GLOBAL or LEGACY state.
    ``replaced``: the ids of the streams whose table the run replaces."""
    if key in {stream_keys[sid] for sid in replaced}:
        return True
    return not is_stream_state_key(key) and all(sid in replaced for sid in stream_keys)


def forgotten_by_reset(
    before: Iterable[str],
    emitted: Collection[str],
    stream_keys: Mapping[str, str],
    *,
    ran_all: bool,
) -> list[str]:
    """The committed state keys (``before``, as the run found them) that a reset drops: its
    streams' states and, when it ran every declared stream, GLOBAL and LEGACY state; never a
    key the run ``emitted`` again (that one is replaced)."""
    own = set(stream_keys.values())
    return [
        key
        for key in before
        if key not in emitted and (key in own or (ran_all and not is_stream_state_key(key)))
    ]


@dataclass(frozen=True)
class CommitPlan:
    """What one commit carries. ``held``: the states held back after it (the next plan's
    ``held``)."""

    streams: list[str]  # stream ids whose pending batches it loads
    states: list[State]  # the states committed with them, in order
    held: dict[str, State]
    forget: list[str]  # state keys it deletes (a reset's)
    replace: list[str]  # stream ids whose run-scoped table replaces the live one


def plan_commit(
    pending: Mapping[str, State],
    held: Mapping[str, State],
    stream_keys: Mapping[str, str],
    replaced: Collection[str],
    *,
    final: bool,
    reset: bool = False,
    before: Sequence[State] = (),
    ran_all: bool = False,
) -> CommitPlan:
    """The commit of the states emitted since the last one (``pending``, by state key).

    ``held``: states held back by earlier commits; ``before``: the committed state the run
    started from (for a reset's final commit); ``ran_all``: the run syncs every declared stream.
    Pure: the inputs are not changed.
    """
    states: list[State] = []
    still_held = dict(held)
    for key, state in pending.items():
        if held_until_the_end(key, stream_keys, replaced):
            still_held[key] = state
        else:
            states.append(state)
    forget: list[str] = []
    if final:
        states += list(still_held.values())
        if reset:
            emitted = set(still_held) | {state_key(s) for s in states}
            before_keys = [state_key(m) for m in before]
            forget = forgotten_by_reset(before_keys, emitted, stream_keys, ran_all=ran_all)
    return CommitPlan(
        streams=covered_streams(stream_keys, pending.keys(), final=final),
        states=states,
        held=still_held,
        forget=forget,
        replace=[sid for sid in stream_keys if sid in replaced] if final else [],
    )


# -- the commit thread ----------------------------------------------------------------------------


class Committer:
    """Commits to the destination in a thread of its own, in order, so that the connector's
    output keeps being drained (and the connector keeps running) while a batch loads.

    At most `depth` commits wait; the reader blocks beyond that, which bounds the staged data
    that is written but not yet loaded. The first failure stops further commits and is raised
    to the reader at its next submit, or at `close`.
    """

    def __init__(self, depth: int = 2) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        context = contextvars.copy_context()  # the run log and log bindings follow the work
        self._thread = threading.Thread(target=context.run, args=(self._work,), daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as exc:
                    self._error = exc

    def submit(self, job: Callable[[], None]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(job)

    def close(self) -> None:
        """Wait for every submitted commit; raise the first failure."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
