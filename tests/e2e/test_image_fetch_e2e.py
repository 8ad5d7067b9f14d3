"""The image fetcher against a real Label Studio 1.23.2: uploads, local files and tokens.

Each test compares the fetched bytes with the original thumbnail file.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from label_studio_sdk import LabelStudio

from backend.images import FetchError, ImageFetcher
from thumbnail_ml.settings import Settings

from .label_studio import LabelStudioInstance, import_files

REPO_ROOT = Path(__file__).resolve().parents[2]
THUMBNAIL_DIR = REPO_ROOT.parent / "shared" / "data" / "thumbnails" / "images"

LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="choice" toName="image" choice="multiple">
    <Choice value="Face"/>
    <Choice value="Text"/>
  </Choices>
</View>"""

# Label Studio may run a storage sync as a background job, so the test polls this long for the tasks.
SYNC_WAIT_S = 30.0

# label-studio-sdk 2.1.2 parses the refresh response with pydantic's deprecated parse_obj.
pytestmark = pytest.mark.filterwarnings("ignore:The `parse_obj` method is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def thumbnails() -> list[Path]:
    """Two real YouTube thumbnails from the shared data set."""
    paths = sorted(THUMBNAIL_DIR.glob("*/*.jpg"))[:2]
    if len(paths) < 2:
        pytest.fail(f"Found {len(paths)} *.jpg thumbnails under {THUMBNAIL_DIR}; the tests need 2.")
    return paths


@pytest.fixture
def make_fetcher(tmp_path: Path):
    """Build fetchers with a fresh cache directory; each is closed after the test."""
    fetchers: list[ImageFetcher] = []

    def make(**values) -> ImageFetcher:
        fetcher = ImageFetcher(Settings(image_cache_dir=tmp_path / "image-cache", **values))
        fetchers.append(fetcher)
        return fetcher

    yield make
    for fetcher in fetchers:
        fetcher.close()


def _upload(client: LabelStudio, path: Path, title: str) -> tuple[int, str]:
    """Upload one file as a new task and return the task id and its image URL."""
    project = client.projects.create(title=title, label_config=LABEL_CONFIG)
    assert project.id is not None
    [task_id] = import_files(client, project.id, [path])
    image_url = client.tasks.get(str(task_id)).data["image"]
    assert image_url.startswith(f"/data/upload/{project.id}/")
    return task_id, image_url


def test_upload_fetched_with_pat(
    label_studio: LabelStudioInstance,
    label_studio_client: LabelStudio,
    make_fetcher: Callable[..., ImageFetcher],
    thumbnails: list[Path],
) -> None:
    task_id, image_url = _upload(label_studio_client, thumbnails[0], "fetch with PAT")
    fetcher = make_fetcher(label_studio_url=label_studio.base_url, label_studio_api_key=label_studio.pat)

    assert fetcher.fetch(image_url, task_id) == thumbnails[0].read_bytes()
    assert fetcher.fetch_many([(task_id, image_url)]) == [thumbnails[0].read_bytes()]


def test_upload_fetched_with_legacy_token(
    label_studio_legacy: LabelStudioInstance,
    make_label_studio_client: Callable[..., LabelStudio],
    make_fetcher: Callable[..., ImageFetcher],
    thumbnails: list[Path],
) -> None:
    client = make_label_studio_client(label_studio_legacy)
    task_id, image_url = _upload(client, thumbnails[1], "fetch with legacy token")
    fetcher = make_fetcher(
        label_studio_url=label_studio_legacy.base_url,
        label_studio_api_key=label_studio_legacy.legacy_token,
    )

    assert fetcher.fetch(image_url, task_id) == thumbnails[1].read_bytes()


def test_upload_fetched_with_setup_credentials(
    label_studio_legacy: LabelStudioInstance,
    make_label_studio_client: Callable[..., LabelStudio],
    make_fetcher: Callable[..., ImageFetcher],
    thumbnails: list[Path],
) -> None:
    # What /setup sends: the host and the user's legacy token, with nothing in the settings.
    client = make_label_studio_client(label_studio_legacy)
    task_id, image_url = _upload(client, thumbnails[0], "fetch with /setup credentials")
    fetcher = make_fetcher()
    fetcher.set_label_studio_credentials(label_studio_legacy.base_url, label_studio_legacy.legacy_token)

    assert fetcher.fetch(image_url, task_id) == thumbnails[0].read_bytes()


def test_upload_read_from_data_dir(
    label_studio: LabelStudioInstance,
    label_studio_client: LabelStudio,
    make_fetcher: Callable[..., ImageFetcher],
    thumbnails: list[Path],
) -> None:
    task_id, image_url = _upload(label_studio_client, thumbnails[1], "read upload from disk")
    # No Label Studio URL: the bytes can only come from the mounted data directory.
    fetcher = make_fetcher(label_studio_data_dir=label_studio.data_dir)

    assert fetcher.fetch(image_url, task_id) == thumbnails[1].read_bytes()


def test_local_files_fetched_over_http_and_from_disk(
    label_studio: LabelStudioInstance,
    label_studio_client: LabelStudio,
    label_studio_document_root: Path,
    make_fetcher: Callable[..., ImageFetcher],
    thumbnails: list[Path],
) -> None:
    storage_dir = label_studio_document_root / "fetch-e2e"
    storage_dir.mkdir()
    originals = {}
    for path in thumbnails:
        shutil.copy(path, storage_dir / path.name)
        originals[path.name] = path.read_bytes()

    project = label_studio_client.projects.create(title="local files fetch", label_config=LABEL_CONFIG)
    assert project.id is not None
    storage = label_studio_client.import_storage.local.create(
        project=project.id, path=str(storage_dir), use_blob_urls=True, title="thumbnails"
    )
    assert storage.id is not None
    label_studio_client.import_storage.local.sync(id=storage.id)

    deadline = time.monotonic() + SYNC_WAIT_S
    tasks = list(label_studio_client.tasks.list(project=project.id))
    while len(tasks) < len(thumbnails) and time.monotonic() < deadline:
        time.sleep(0.5)
        tasks = list(label_studio_client.tasks.list(project=project.id))
    assert len(tasks) == len(thumbnails)

    over_http = make_fetcher(label_studio_url=label_studio.base_url, label_studio_api_key=label_studio.pat)
    from_disk = make_fetcher(document_root=label_studio_document_root)
    for task in tasks:
        image_url = task.data["image"]
        # Label Studio prefixes local-files URLs with LABEL_STUDIO_HOST, which the harness sets.
        assert image_url.startswith(f"{label_studio.base_url}/data/local-files/?d=fetch-e2e/")
        expected = originals[image_url.rsplit("/", 1)[1]]
        assert over_http.fetch(image_url, task.id) == expected
        assert from_disk.fetch(image_url.removeprefix(label_studio.base_url), task.id) == expected


@pytest.mark.parametrize(
    ("key_name", "kind"),
    [("pat", "personal access token"), ("legacy_token", "legacy token")],
)
def test_wrong_token_fails_authentication(
    label_studio: LabelStudioInstance,
    label_studio_legacy: LabelStudioInstance,
    label_studio_client: LabelStudio,
    make_fetcher: Callable[..., ImageFetcher],
    thumbnails: list[Path],
    key_name: str,
    kind: str,
) -> None:
    task_id, image_url = _upload(label_studio_client, thumbnails[0], f"wrong {kind}")
    # The other server's token has the right form but belongs to a different Label Studio.
    # A legacy token would fail here anyway, because this server has legacy tokens turned off.
    wrong_key = getattr(label_studio_legacy, key_name)
    assert wrong_key
    fetcher = make_fetcher(label_studio_url=label_studio.base_url, label_studio_api_key=wrong_key)

    with pytest.raises(FetchError) as caught:
        fetcher.fetch(image_url, task_id)

    assert caught.value.reason == "unauthorized"
    assert "authentication failed" in str(caught.value)
    assert kind in str(caught.value)
    assert wrong_key not in str(caught.value)


def test_cloud_uri_reaches_presign_endpoint(
    label_studio: LabelStudioInstance,
    label_studio_client: LabelStudio,
    make_fetcher: Callable[..., ImageFetcher],
    thumbnails: list[Path],
) -> None:
    # No cloud storage is connected, so Label Studio returns 404 after decoding the URI. Its
    # log line shows that the request reached the presign view with the URI intact.
    task_id, _ = _upload(label_studio_client, thumbnails[0], "cloud URI without storage")
    uri = "s3://bucket/Dog (8).jpg"
    fetcher = make_fetcher(label_studio_url=label_studio.base_url, label_studio_api_key=label_studio.pat)

    with pytest.raises(FetchError) as caught:
        fetcher.fetch(uri, task_id)

    assert caught.value.reason == "not_found"
    assert caught.value.status == 404
    assert "cloud storage" in str(caught.value)
    assert f"Could not find storage for URI {uri}" in label_studio.log_path.read_text(errors="replace")
