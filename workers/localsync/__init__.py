"""The local sync engine: a connector's ``read``, staged into batch files, committed to the
connection's destination together with the STATE that covers it.

- ``planning.py``: the source's catalog (discovered, or cached), the streams of the run checked
  against it, the state the connector starts from;
- ``batches.py``: batch files in the staging store, and their writer;
- ``commits.py``: which batches a STATE covers (pure rules), and the commit thread;
- ``engine.py``: ``LocalSync``, one attempt: the read loop, commits, cleanup after a failure;
- ``results.py``: what a sync reports (``SyncProgress`` in heartbeats, ``SyncResult``).
"""
