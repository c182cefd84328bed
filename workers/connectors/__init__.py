"""Airbyte protocol connectors, run as subprocesses.

- ``executors.py``: how a connector's command line is obtained (a PyPI package installed into a
  virtual environment of its own, or a command on PATH);
- ``process.py``: the Connector, which runs ``spec`` / ``check`` / ``discover`` / ``read`` with
  private config files, a stall watcher, and death with its worker;
- ``protocol.py``: what a connector prints, checked and parsed (RECORD lines, messages, catalogs,
  STATE keys);
- ``errors.py``: the errors of running a connector, classified where they are raised.
"""
