"""The labeling page of a real Label Studio 1.23.2 in headless Chromium, with the model's choices pre-selected.

Chromium is Debian's ``chromium`` package (``make chromium`` installs it), driven by the
``playwright`` package from PyPI. Playwright's own browser download is never used. The test
logs in through the login form, opens a task whose prediction Label Studio fetched from the
backend, and checks each checkbox of the labeling interface against the stored prediction.
With ``UPDATE_SCREENSHOTS=1`` it also writes the screenshot that the README shows.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from model.label_config import default_label_config_xml, load_label_config
from tests.servers import start_backend
from tests.support import REPO_ROOT, THUMBNAIL_IMAGES

from .label_studio import create_sdk_client, import_files

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "images" / "label-studio-prelabels.png"
# Labelled with three or four classes each. The test opens the one with the most predicted classes.
CANDIDATES = [
    "basile-bron__Thumbnail-clickbait-detection/0.0_UjhvU0ylNGw.jpg",
    "basile-bron__Thumbnail-clickbait-detection/0.0_80T65cJMPmA.jpg",
    "Cengineer00__thumbnail-scorer/2shHryscTng.jpg",
]
# The labeling page took a few seconds to render on a 2-core machine. The margin is for a loaded one.
PAGE_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser_backend(trained_model, label_studio, tmp_path_factory):
    """The backend with the trained model and the shared server's personal access token."""
    server = start_backend(
        {"MODEL_DIR": str(trained_model.store.root), "LABEL_STUDIO_URL": label_studio.base_url,
         "LABEL_STUDIO_API_KEY": label_studio.pat,
         "IMAGE_CACHE_DIR": str(tmp_path_factory.mktemp("cache-browser"))},
        tmp_path_factory.mktemp("backend-browser") / "backend.log",
    )
    yield server
    server.stop()


def _project_with_predictions(client, backend_url: str, version: str) -> tuple[int, int, set[str]]:
    """Create a project of the candidates, retrieve predictions, and return the richest task."""
    project = client.projects.create(title="browser pre-labels", label_config=default_label_config_xml())
    import_files(client, project.id, [THUMBNAIL_IMAGES / relative for relative in CANDIDATES])
    backend = client.ml.create(project=project.id, url=backend_url, title="thumbnail-ml", is_interactive=True,
                               auto_update=True)
    assert backend.state == "CO"
    client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                          selected_items={"all": True, "excluded": []})

    predicted: dict[int, set[str]] = {}
    for prediction in client.predictions.list(project=project.id):
        assert prediction.model_version == version
        predicted[prediction.task] = {choice for region in prediction.result for choice in region["value"]["choices"]}
    assert len(predicted) == len(CANDIDATES)

    # Label Studio shows stored predictions only of the project's model version, and connecting
    # the backend set it to the backend's title.
    client.projects.update(id=project.id, model_version=version, show_collab_predictions=True)
    task_id = max(predicted, key=lambda task: (len(predicted[task] - {"None"}), -task))
    return project.id, task_id, predicted[task_id]


def _log_in(page: Page, base_url: str, email: str, password: str) -> None:
    page.goto(f"{base_url}/user/login/")
    page.locator("input[name=email]").fill(email)
    page.locator("input[name=password]").fill(password)
    page.locator("form button[type=submit], form input[type=submit]").first.click()
    page.wait_for_url(lambda url: "/user/login" not in url)


def test_labeling_page_preselects_predictions(trained_model, label_studio, browser_backend, tmp_path):
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: run 'make chromium' (Debian's chromium package)"
    client = create_sdk_client(label_studio)
    project_id, task_id, predicted = _project_with_predictions(client, browser_backend.url, trained_model.version)
    choices = load_label_config(None)[0].choices
    assert predicted - {"None"}, f"the model predicts no class for any of {CANDIDATES}"
    assert set(choices) - predicted, "the model predicts every class, so unchecked boxes cannot be checked"

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        page = context.new_page()
        try:
            _log_in(page, label_studio.base_url, label_studio.email, label_studio.password)
            page.goto(f"{label_studio.base_url}/projects/{project_id}/data?task={task_id}")
            expect(page.locator("img[src*='/data/upload/']").last).to_be_visible()
            for choice in choices:
                # Label Studio 1.23.2 names each choice's checkbox after its value. The visible label
                # also carries the hotkey, as in "Face[6]".
                checkbox = page.locator(f'.lsf-choice__checkbox input[type=checkbox][name="{choice}"]')
                expect(checkbox, f"no checkbox for {choice}").to_have_count(1)
                if choice in predicted:
                    expect(checkbox, f"{choice} is predicted but not checked").to_be_checked()
                else:
                    expect(checkbox, f"{choice} is not predicted but checked").not_to_be_checked()
            screenshot = tmp_path / "label-studio-prelabels.png"
            page.screenshot(path=str(screenshot))
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))
            (tmp_path / "failure.html").write_text(page.content(), encoding="utf-8")
            raise
        finally:
            context.close()

    assert screenshot.stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)
