"""The one place that builds the Temporal client."""

from __future__ import annotations

from temporalio.client import Client

from workers.codec import data_converter
from workers.settings import Settings


async def connect(settings: Settings) -> Client:
    """A client whose payloads are encrypted before they leave the process."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings.payload_key_list()),
    )
