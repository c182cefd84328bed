"""The whole path on real parts: real source-faker through the workflow into DuckDB, twice."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.worker import Replayer

from purge.scrub import MIN_FREE_TEXT_LENGTH, state_leaf_values
from tests.support.session import PAYLOAD_KEYS
from workers.cli import start_sync
from workers.codec import EncryptionCodec, data_converter, parse_keys
from workers.settings import Settings
from workflows.models import SyncRequest, SyncSummary
from workflows.sync import SyncConnectionWorkflow

pytestmark = [pytest.mark.temporal, pytest.mark.connector]

SECRET = "s3cr3t-Faker-Key-0042"
FAKER_CONFIG = {
    "count": 300,
    "seed": 7,
    "records_per_slice": 50,
    "parallelism": 1,
    "always_updated": False,
}


def leaky_connector(tmp_path: Path, faker: str) -> Path:
    """source-faker behind a wrapper that prints its API key to stderr, as careless connectors
    do: the retained log must not keep it."""
    script = tmp_path / "leaky-source-faker"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "if '--config' in sys.argv:\n"
        "    config = json.load(open(sys.argv[sys.argv.index('--config') + 1]))\n"
        "    print(f\"connecting with api_key={config['api_key']}\", file=sys.stderr, flush=True)\n"
        f"os.execv({faker!r}, [{faker!r}, *sys.argv[1:]])\n"
    )
    script.chmod(0o755)
    return script


def connections_toml(command: Path, warehouse: Path) -> str:
    config = ", ".join(f"{k} = {json.dumps(v)}" for k, v in FAKER_CONFIG.items())
    return f"""
        [[connections]]
        id = "faker"
        name = "Faker e2e"
        [connections.source]
        command = ["{command}"]
        config = {{ {config} }}
        secrets = {{ api_key = "SLUICE_TEST_FAKER_KEY" }}
        [connections.destination]
        path = "{warehouse}"
        [[connections.streams]]
        name = "users"
        sync_mode = "incremental"
        destination_mode = "append_dedup"
        cursor_field = "updated_at"
        primary_key = "id"
        [[connections.streams]]
        name = "purchases"
        sync_mode = "incremental"
        destination_mode = "append"
        cursor_field = ["updated_at"]
        [[connections.streams]]
        name = "products"
        sync_mode = "full_refresh"
        destination_mode = "overwrite"
    """


def emitted_by_source(faker: str, tmp_path: Path) -> Counter[str]:
    """What the bare connector emits for the same config, counted independently of Sluice."""
    config = tmp_path / "bare-config.json"
    config.write_text(json.dumps({**FAKER_CONFIG, "api_key": SECRET}))
    discovered = subprocess.run(
        [faker, "discover", "--config", str(config)], capture_output=True, check=True
    )
    catalog_message = next(
        json.loads(line) for line in discovered.stdout.splitlines() if b'"CATALOG"' in line
    )
    catalog = tmp_path / "bare-catalog.json"
    catalog.write_text(
        json.dumps(
            {
                "streams": [
                    {"stream": s, "sync_mode": "full_refresh", "destination_sync_mode": "append"}
                    for s in catalog_message["catalog"]["streams"]
                ]
            }
        )
    )
    read = subprocess.run(
        [faker, "read", "--config", str(config), "--catalog", str(catalog)],
        capture_output=True,
        check=True,
    )
    counts: Counter[str] = Counter()
    for line in read.stdout.splitlines():
        message = json.loads(line)
        if message["type"] == "RECORD":
            counts[message["record"]["stream"]] += 1
    return counts


async def decrypted_history(history_json: str) -> str:
    """The workflow history with every payload decrypted and decoded: what the payloads say
    before encryption must be metadata only too."""
    codec = EncryptionCodec(parse_keys(PAYLOAD_KEYS))

    async def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "data" in node and "metadata" in node and isinstance(node["data"], str):
                payload = json_format.ParseDict(node, Payload())
                (plain,) = await codec.decode([payload])
                return plain.data.decode("utf-8", "replace")
            return {k: await walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [await walk(v) for v in node]
        return node

    return json.dumps(await walk(json.loads(history_json)))


def forms(value: str) -> set[str]:
    return {value, json.dumps(value)[1:-1], repr(value)[1:-1]}


async def test_faker_twice_full_then_incremental(
    tmp_path: Path,
    faker_command: str,
    make_settings: Callable[..., Settings],
    run_worker: Any,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICE_TEST_FAKER_KEY", SECRET)
    warehouse = tmp_path / "warehouse.duckdb"
    settings = make_settings(
        connections_toml(leaky_connector(tmp_path, faker_command), warehouse), batch_records=120
    )
    sluice = await run_worker(settings)

    summaries: list[SyncSummary] = []
    histories: list[str] = []
    converter = data_converter(parse_keys(PAYLOAD_KEYS))
    replayer = Replayer(workflows=[SyncConnectionWorkflow], data_converter=converter)
    for _ in range(2):
        handle = await start_sync(client, settings, SyncRequest(connection_id="faker"))
        summaries.append(await handle.result())
        history = await handle.fetch_history()
        # The workflow code replays its own history: a non-deterministic change fails here.
        await replayer.replay_workflow(history)
        histories.append(await decrypted_history(history.to_json()))
        assert SECRET not in history.to_json() and "Faker e2e" not in history.to_json()
    first, second = summaries

    # Row counts in DuckDB match what the source emitted.
    emitted = emitted_by_source(faker_command, tmp_path)
    assert first.records == dict(emitted)
    assert not first.incremental
    with duckdb.connect(str(warehouse), read_only=True) as db:
        rows = {
            table: db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]  # type: ignore[index]
            for table in ("users", "purchases", "products")
        }
        states = [
            json.loads(r[0]) for r in db.execute("SELECT state FROM _sluice_state").fetchall()
        ]
        columns = {
            r[0]
            for r in db.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'users'"
            ).fetchall()
        }
    assert rows == dict(emitted)
    assert {"id", "updated_at", "address", "_airbyte_raw_id", "_airbyte_extracted_at"} <= columns

    # The second run starts from the committed state: the incremental streams have nothing new;
    # the overwrite stream is replaced, not appended to.
    assert second.incremental
    assert second.records == {"users": 0, "purchases": 0, "products": emitted["products"]}
    assert second.redactions["state"] >= 2  # faker printed "Setting state of ... to {...}"

    # No object remains under the staging prefixes, and the receipts say so.
    for summary in summaries:
        assert summary.verified_empty and summary.objects_purged > 0
        assert not (sluice.staging_root / "faker" / summary.run_id).exists()
        receipt = sluice.metadata.get_receipt(summary.receipt_id or "")
        assert receipt is not None and receipt["verified_empty"] and receipt["remaining"] == 0
    assert list(sluice.staging_root.rglob("*")) in ([], [sluice.staging_root / "faker"])

    # No cursor value of the state, and no secret, in what is retained or in Temporal.
    cursor_values = {v for v in state_leaf_values(states) if len(v) >= MIN_FREE_TEXT_LENGTH}
    updated_at = {s["stream"]["stream_state"]["updated_at"] for s in states}
    assert updated_at <= cursor_values and updated_at
    logs = [Path(s.log_uri.removeprefix("file://")).read_text() for s in summaries if s.log_uri]
    assert "Setting state of SourceFaker stream to [REDACTED:state]" in logs[1]
    assert "connecting with api_key=[REDACTED:secret]" in logs[0]
    assert " sluice INFO sync committed " in logs[0]  # the worker's own lines for the run
    retained = {
        "logs": "\n".join(logs),
        "metadata store": sluice.metadata.dump_text(),
        "workflow results": "\n".join(s.model_dump_json() for s in summaries),
        "workflow histories": "\n".join(histories),
    }
    for where, text in retained.items():
        for value in cursor_values | {SECRET}:
            for form in forms(value):
                assert form not in text, f"{form!r} found in {where}"

    # The metadata store does keep the configuration metadata.
    streams = {row["name"]: row for row in sluice.metadata.stream_rows("faker")}
    assert set(streams) == {"users", "purchases", "products"}
    assert streams["users"]["cursor_field"] == ["updated_at"]
    assert streams["users"]["primary_key"] == [["id"]]
    assert {"id", "name", "email", "updated_at"} <= set(streams["users"]["columns"])
    run = sluice.metadata.get_run(second.run_id)
    assert run is not None and run["status"] == "succeeded" and run["incremental"]
