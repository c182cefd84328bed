"""Airbyte, the product: the client of its API (api.py), for connections that Airbyte runs.

The Airbyte *protocol* (connectors Sluice runs itself) is in workers/connectors/."""
