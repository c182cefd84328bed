"""The machine's PostgreSQL (127.0.0.1:5432, trust auth): each test that needs it makes a
database of its own and drops it."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg

POSTGRES = "host=127.0.0.1 port=5432 user=postgres"


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new database named `prefix_<random>`, dropped (whoever is connected) afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{POSTGRES} dbname=postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(f"{POSTGRES} dbname=postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
