"""Heartbeating on a timer for synchronous activities.

The work updates ``details`` as it goes; a background thread sends the latest details every few
seconds. This keeps heartbeat calls out of tight loops and keeps long blocking steps (installing a
connector, a big load) alive.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from temporalio import activity


class Heartbeater:
    def __init__(
        self,
        details: Any = None,
        interval: float | None = None,
        on_cancel: Callable[[], None] | None = None,
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        self.details = details
        self._interval = interval
        self._on_cancel = on_cancel
        self._on_beat = on_beat
        self._stop = threading.Event()

    def update(self, details: Any) -> None:
        self.details = details

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.send()
            if self._on_beat is not None:
                self._on_beat()
            # Cancellation reaches a synchronous activity through heartbeats: act on it here,
            # since the work itself may be blocked (a connector that prints nothing).
            if self._on_cancel is not None and activity.is_cancelled():
                self._on_cancel()
                self._on_cancel = None

    def send(self) -> None:
        if self.details is None:
            activity.heartbeat()
        else:
            activity.heartbeat(self.details)

    @contextmanager
    def running(self) -> Iterator[Heartbeater]:
        interval = self._interval
        if interval is None:
            # Well inside the heartbeat timeout, or a live activity would be declared dead.
            timeout = activity.info().heartbeat_timeout
            interval = min(5.0, timeout.total_seconds() / 3) if timeout else 5.0
        # The activity context lives in a context variable: the thread runs in a copy of it.
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(self._beat, interval), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def resume_details() -> Any | None:
    """The details of the last heartbeat of a previous attempt, if any."""
    details = activity.info().heartbeat_details
    return details[0] if details else None
