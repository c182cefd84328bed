"""The base of every error `purge/` raises on purpose.

`purge/` depends on nothing of Sluice's, so it has its own base; callers (the worker's
activities, the CLI) turn it into what they report in one place (`workers/errors.py`).
"""

from __future__ import annotations


class PurgeError(Exception):
    """A purge that must not (or cannot) go on.

    ``kind`` names the error where it is reported (Temporal's ApplicationError type, the CLI);
    ``retryable`` says whether another attempt may go differently. Messages name the target and
    what was wrong; they never quote an object's content.
    """

    kind: str = "PurgeError"
    retryable: bool = False
