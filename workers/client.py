"""The one place that builds the Temporal client, and the links into the Temporal UI."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.parse
from datetime import timedelta

from temporalio.api.enums.v1 import IndexedValueType, TaskQueueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.runtime import Runtime

from workers.codec import data_converter
from workers.settings import Settings
from workflows import search_attributes

# One connection attempt never takes longer than this (a black-holed address would otherwise
# hang until the operating system gives up on the TCP handshake).
CONNECT_TIMEOUT = timedelta(seconds=5)


class TemporalUnreachableError(RuntimeError):
    """No Temporal frontend answers at the configured address."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot reach Temporal at {address} (SLUICE_TEMPORAL_ADDRESS): {reason}")
        self.address = address
        self.reason = reason


class SearchAttributesMissingError(RuntimeError):
    """The namespace lacks Sluice's search attributes and they could not be registered."""


def register_commands(namespace: str) -> list[str]:
    """The commands that register Sluice's search attributes on a cluster."""
    return [
        f"temporal operator search-attribute create --namespace {namespace} "
        f"--name {key.name} --type Keyword"
        for key in search_attributes.ALL
    ]


class TemporalAddressError(ValueError):
    """SLUICE_TEMPORAL_ADDRESS is not an address a client can connect to."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(
            f"SLUICE_TEMPORAL_ADDRESS {address!r} is not a host:port address: {reason}"
        )
        self.address = address


def _is_local(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]") or address
    return host in ("localhost", "127.0.0.1", "::1", "0.0.0.0")


def unreachable_reason(error: BaseException) -> str:
    """A few words on why a connection failed, from the SDK's (long, Rust-flavoured) text."""
    text = str(error)
    lower = text.lower()
    if "connection refused" in lower or "connectionrefused" in lower:
        return "connection refused"
    if "dns error" in lower or "failed to lookup address" in lower:
        return "unknown host"
    if "timed out" in lower or "timeout" in lower or "deadline" in lower:
        return "timed out"
    if "invalid uri" in lower or "invalid authority" in lower or "invalid port" in lower:
        return "not a host:port address"
    text = re.sub(r"\s+", " ", text.removeprefix("Failed client connect: ")).strip()
    return text if len(text) <= 200 else text[:197] + "..."


async def connect(
    settings: Settings, wait_seconds: float = 0, runtime: Runtime | None = None
) -> Client:
    """A client whose payloads are encrypted before they leave the process. With
    `wait_seconds`, a server that is still starting is waited for that long; with `runtime`
    (a worker's, serving its metrics: workers/metrics.py), on that runtime. Raises
    `TemporalUnreachableError` (a RuntimeError) when no server answered in time, and
    `TemporalAddressError` (a ValueError) for an address that is not one."""
    deadline = time.monotonic() + wait_seconds
    converter = data_converter(settings.payload_key_list())
    while True:
        try:
            client = await Client.connect(
                settings.temporal_address,
                namespace=settings.temporal_namespace,
                data_converter=converter,
                connect_timeout=CONNECT_TIMEOUT,
                runtime=runtime,
            )
            break
        except RuntimeError as exc:
            if time.monotonic() >= deadline:
                reason = unreachable_reason(exc)
                if _is_local(settings.temporal_address) and reason == "connection refused":
                    reason += "; start it with 'sluice server'"
                raise TemporalUnreachableError(settings.temporal_address, reason) from exc
            await asyncio.sleep(0.5)
        except ValueError as exc:
            raise TemporalAddressError(settings.temporal_address, str(exc)) from exc
    await ensure_search_attributes(client, settings.temporal_namespace)
    return client


async def ensure_search_attributes(client: Client, namespace: str) -> None:
    """Make sure the namespace knows Sluice's search attributes (every run sets them, and a
    run setting an unknown one would be stuck): registered here when missing, where the
    cluster allows it (a dev server, a self-hosted cluster); otherwise a clear error saying
    how to register them."""
    known = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    missing = [key.name for key in search_attributes.ALL if key.name not in known.custom_attributes]
    if not missing:
        return
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes=dict.fromkeys(
                    missing, IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
                ),
            )
        )
    except RuntimeError as exc:
        raise SearchAttributesMissingError(
            f"the Temporal namespace {namespace!r} lacks Sluice's search attributes "
            f"({', '.join(missing)}) and they could not be registered ({exc}); register them "
            "once with:\n  " + "\n  ".join(register_commands(namespace))
        ) from exc


def ui_link(settings: Settings, workflow_id: str | None = None, run_id: str | None = None) -> str:
    """The Temporal UI page of a workflow run (or of a workflow's latest run, or of the
    namespace's workflows), under SLUICE_TEMPORAL_UI_URL."""
    base = settings.temporal_ui_url.rstrip("/")
    link = f"{base}/namespaces/{_quote(settings.temporal_namespace)}/workflows"
    if workflow_id:
        link += f"/{_quote(workflow_id)}"
        if run_id:
            link += f"/{_quote(run_id)}"
    return link


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


async def has_worker(client: Client, settings: Settings) -> bool:
    """Whether some worker polls the task queue."""
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=settings.temporal_namespace,
            task_queue=TaskQueue(name=settings.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return len(response.pollers) > 0
