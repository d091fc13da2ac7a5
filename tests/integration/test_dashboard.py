"""The dashboard in a real headless Chromium (Debian's) against the real platform: sign in,
watch a running job's chart gain points, pause and resume it, find it on the nodes page,
cancel it; user text never runs as HTML; no console error anywhere."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.stack import Stack
from trainyard.client import Client

pytestmark = pytest.mark.integration

HOSTILE = "<img src=x onerror=alert(1)>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Where to save the job page's screenshot (the README's picture), when set.
SCREENSHOTS = os.environ.get("TRAINYARD_SCREENSHOT_DIR")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `make test` installs it with apt-get")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def test_ui_is_static_with_a_strict_policy(stack: Stack) -> None:
    page = httpx.get(f"{stack.url}/ui/", timeout=10)
    assert page.status_code == 200 and "<script" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert httpx.get(f"{stack.url}/ui/vendor/uPlot.iife.min.js", timeout=10).status_code == 200


@pytest.mark.timeout(420)
def test_live_job_page_and_cancel(
    stack: Stack, browser: object, corpus_file: Path, tmp_path: Path
) -> None:
    # An admin key: it sees the nodes page too.
    key = stack.cli("keys", "create", "--project", "dashboard", "--admin").strip().splitlines()[-1]
    with Client(stack.url, key) as client:
        ds = client.datasets.upload(corpus_file, name=HOSTILE, timeout=120)
        job = client.jobs.create(
            {
                "name": HOSTILE,
                "dataset_id": ds.id,
                "model": {"preset": "tiny"},
                "training": {
                    "max_steps": 100000,
                    "seq_len": 32,
                    "batch_size": 8,
                    "eval_interval": 50,
                    "eval_batches": 1,
                    "checkpoint_interval": 100000,
                },
                "resources": {"processes_per_node": 1, "accelerator": "cpu"},
            }
        )
        try:
            _drive(stack, browser, key, job.id, ds.id)
        finally:
            client.jobs.cancel(job.id)


def _drive(stack: Stack, browser: object, key: str, job_id: str, dataset_id: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    problems: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.set_default_timeout(30_000)

    page.goto(f"{stack.url}/ui/")
    page.fill("#key", key)
    page.click("button[type=submit]")
    row = page.locator(f"tr[data-job='{job_id}']")
    row.wait_for()
    assert row.locator(".job-name").text_content() == HOSTILE
    assert page.locator("main img").count() == 0
    assert page.evaluate("sessionStorage.getItem('trainyard.key')") == key
    assert page.evaluate("localStorage.length") == 0

    row.locator("a").click()
    page.locator("#job-status [data-status='running']").wait_for(timeout=180_000)
    loss = page.locator(".chart[data-metric='loss']")

    def points() -> int:
        return int(loss.get_attribute("data-points") or 0)

    wait_until(lambda: points() > 0, 60, "the first loss points")
    first = points()
    wait_until(lambda: points() > first + 5, 60, "the chart to gain points")
    assert page.locator(".chart[data-metric='loss'] canvas").count() == 1
    if SCREENSHOTS:
        page.wait_for_timeout(3000)
        page.screenshot(path=str(Path(SCREENSHOTS) / "dashboard-job.png"), full_page=False)

    # Pause: the job checkpoints and frees its node; resume: it queues and runs again.
    page.click("#job-pause")
    page.locator("#job-status [data-status='paused']").wait_for(timeout=60_000)
    assert page.locator("#job-resume").is_enabled() and page.locator("#job-pause").is_disabled()
    page.click("#job-resume")
    page.locator("#job-status [data-status='running']").wait_for(timeout=180_000)
    assert page.locator("#job-error").text_content() == ""

    # The nodes page shows the node that runs the job, with a link to it.
    page.goto(f"{stack.url}/ui/#/nodes")
    node = page.locator("tr[data-node]", has=page.locator(f"a[href='#/jobs/{job_id}']"))
    node.wait_for()
    assert node.locator("[data-status='online']").count() == 1
    node.locator(f"a[href='#/jobs/{job_id}']").click()
    page.locator("#job-status [data-status='running']").wait_for()

    page.click("#job-cancel")
    page.locator(
        "#job-status [data-status='cancelling'], #job-status [data-status='cancelled']"
    ).first.wait_for()
    page.locator("#job-status [data-status='cancelled']").wait_for(timeout=60_000)

    page.goto(f"{stack.url}/ui/#/datasets/{dataset_id}")
    page.locator(".dataset-name").first.wait_for()
    assert page.locator(".dataset-name").first.text_content() == HOSTILE
    page.goto(f"{stack.url}/ui/#/datasets")
    page.locator(f"tr[data-dataset='{dataset_id}']").wait_for()
    assert page.locator("main img").count() == 0
    page.wait_for_timeout(500)
    assert problems == []
