"""Sluice's custom search attributes: what a run is, readable in the Temporal UI's list pages
without the codec (they are indexed in plain text, so they hold names, never values).

Every run sets them itself, whoever started it (the CLI, a schedule, the UI's start form), so an
operator can filter the Workflows page, e.g. ``SluiceConnection = "faker"``. A cluster must know
them before a run sets them: ``sluice server`` registers them on the dev server, and the README
gives the ``temporal operator search-attribute create`` lines for a production cluster.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

CONNECTION = SearchAttributeKey.for_keyword("SluiceConnection")
"""The connection id (``faker``)."""

BACKEND = SearchAttributeKey.for_keyword("SluiceBackend")
"""``local`` or ``airbyte``; set once the run is planned."""

RUN_KIND = SearchAttributeKey.for_keyword("SluiceRunKind")
"""``sync``, ``replay`` or ``sweep``."""

RUN_STATUS = SearchAttributeKey.for_keyword("SluiceRunStatus")
"""How the run ended as Sluice recorded it (``succeeded``, ``failed``, ``cancelled``,
``timed_out``), or ``refused`` for a run that never started (a busy connection, bad input), so
that a refused start and a real failure differ in the list."""

ALL = (CONNECTION, BACKEND, RUN_KIND, RUN_STATUS)
"""Every key, as a cluster must register them (all of type Keyword)."""
