"""The Prefect UI as the front door, in a real browser: Debian's Chromium driven by Playwright.

Against a real Prefect server and worker (`nerflow serve`, tiny BERT): open the training deployment,
Run -> Custom run, change the epochs and the training-sample limit in the form, submit, wait for the
run to complete, open the flow run page and check that nerflow's artifacts are shown. Screenshots of
the form and of the finished run page are saved under the test's output folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from serve_stack import deployment_spec, start_serve, stop_serve

pytestmark = pytest.mark.slow  # Chromium against a real Prefect server and worker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACT_KEYS = ["dataset-profile", "training-progress", "training-epochs", "metrics-overall", "metrics-per-entity", "run-summary"]


def ensure_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)


def get_json(url: str, body=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def ui_stack(tmp_path_factory, tiny_bert):
    ensure_chromium()
    root = tmp_path_factory.mktemp("ui")
    spec = deployment_spec(root, tiny_bert)
    spec["deployments"] = spec["deployments"][:1]  # the training deployment only, no schedule
    spec["deployments"][0]["schedules"] = []
    proc, port = start_serve(root, spec)
    yield {"base": f"http://127.0.0.1:{port}", "root": root}
    stop_serve(proc)


def form_input(page, label: str):
    """The input of the schema-form property whose own label starts with `label`."""
    prop = page.locator(
        ".p-label.schema-form-property",
        has=page.locator(":scope > .p-label__header .schema-form-property__label", has_text=re.compile(f"^{re.escape(label)} ")),
    )
    return prop.locator("input").first


def test_custom_run_from_the_ui_and_its_artifacts(ui_stack, request):
    from playwright.sync_api import expect, sync_playwright

    base = ui_stack["base"]
    shots = Path(request.config.rootpath) / "test-output" / "ui"
    shots.mkdir(parents=True, exist_ok=True)
    deployment = get_json(f"{base}/api/deployments/name/finetune_ner/wikiann-bn")

    def local_only(route):
        if route.request.url.startswith(("http://127.0.0.1", "data:", "blob:")):
            route.continue_()
        else:
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.route("**/*", local_only)
        page = context.new_page()
        page.goto(f"{base}/deployments/deployment/{deployment['id']}")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("Custom run").click()

        # The form is typed and explained: descriptions from the settings model, enums as selects.
        page.get_by_text("Epochs (Optional)").wait_for()
        expect(page.get_by_text("Passes over the training split.")).to_be_visible()
        form_input(page, "Epochs").fill("2")
        form_input(page, "Max Train Samples").fill("32")
        form_input(page, "Epochs").scroll_into_view_if_needed()
        expect(form_input(page, "Epochs")).to_have_value("2")
        page.screenshot(path=str(shots / "custom-run-form.png"))

        created = []
        page.on("response", lambda r: created.append(r) if "create_flow_run" in r.url and r.request.method == "POST" else None)
        for attempt in range(3):  # a busy SQLite server can answer 503; the form can be submitted again
            page.get_by_role("button", name="Submit").click()
            deadline = time.monotonic() + 30
            while not created and time.monotonic() < deadline:
                page.wait_for_timeout(200)
            if created and created[-1].status == 201:
                break
            created.clear()
            page.wait_for_timeout(2000)
        assert created and created[-1].status == 201
        run = created[-1].json()
        assert run["parameters"]["settings"]["train"]["epochs"] == 2
        assert run["parameters"]["settings"]["dataset"]["max_train_samples"] == 32

        deadline = time.monotonic() + 300
        while (state := get_json(f"{base}/api/flow_runs/{run['id']}")["state_type"]) != "COMPLETED":
            assert state not in ("FAILED", "CRASHED", "CANCELLED"), state
            assert time.monotonic() < deadline, f"run still {state}"
            time.sleep(2)

        page.goto(f"{base}/runs/flow-run/{run['id']}")
        expect(page.get_by_text("Completed").first).to_be_visible(timeout=30000)
        page.screenshot(path=str(shots / "flow-run-page.png"))
        page.get_by_text("Artifacts", exact=True).first.click()
        for key in ARTIFACT_KEYS:
            expect(page.get_by_text(key, exact=True).first).to_be_visible(timeout=30000)
        page.wait_for_timeout(500)  # let the cards finish painting before the picture
        page.screenshot(path=str(shots / "flow-run-artifacts.png"), full_page=True)
        browser.close()

    models = list((ui_stack["root"] / "runs").glob("*/model/model.safetensors"))
    assert len(models) == 1
    log = json.loads((models[0].parent.parent / "train_log.json").read_text())
    assert [round(e["epoch"]) for e in log if "eval_f1" in e] == [1, 2]  # the form's epochs reached training
