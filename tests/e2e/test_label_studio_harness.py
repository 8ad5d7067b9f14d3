"""Smoke tests for the Label Studio harness: tokens, project creation, upload and download."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from label_studio_sdk import LabelStudio

from .label_studio import (
    HTTP_TIMEOUT_S,
    LabelStudioError,
    LabelStudioInstance,
    bearer_headers,
    build_server_env,
    ensure_label_studio_installed,
    import_files,
    start_label_studio,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
THUMBNAIL_DIR = REPO_ROOT.parent / "shared" / "data" / "thumbnails" / "images"

LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="choice" toName="image" choice="multiple">
    <Choice value="Face"/>
    <Choice value="Text"/>
    <Choice value="Money"/>
  </Choices>
</View>"""


def _whoami_status(instance: LabelStudioInstance, authorization: str) -> int:
    response = requests.get(
        f"{instance.base_url}/api/current-user/whoami",
        headers={"Authorization": authorization},
        timeout=HTTP_TIMEOUT_S,
    )
    return response.status_code


def _jwt_settings(instance: LabelStudioInstance) -> dict[str, object]:
    assert instance.pat is not None
    response = requests.get(
        f"{instance.base_url}/api/jwt/settings",
        headers=bearer_headers(instance.base_url, instance.pat),
        timeout=HTTP_TIMEOUT_S,
    )
    response.raise_for_status()
    return dict(response.json())


@pytest.fixture(scope="module")
def thumbnail_paths() -> list[Path]:
    """Two real YouTube thumbnails from the shared data set."""
    paths = sorted(THUMBNAIL_DIR.glob("*/*.jpg"))[:2]
    if len(paths) < 2:
        pytest.fail(f"Found {len(paths)} *.jpg thumbnails under {THUMBNAIL_DIR}; the tests need 2.")
    return paths


@pytest.fixture(scope="module")
def thumbnail_path(thumbnail_paths: list[Path]) -> Path:
    """One real YouTube thumbnail from the shared data set."""
    return thumbnail_paths[0]


def test_pat_authenticates_sdk(
    label_studio: LabelStudioInstance, label_studio_client: LabelStudio
) -> None:
    me = label_studio_client.users.whoami()

    assert label_studio.pat is not None
    assert label_studio.pat.count(".") == 2, "a PAT is a JWT with three dot-separated parts"
    assert me.email == label_studio.email


def test_legacy_token_rejected_by_default(label_studio: LabelStudioInstance) -> None:
    settings = _jwt_settings(label_studio)

    assert settings["legacy_api_tokens_enabled"] is False
    assert _whoami_status(label_studio, f"Token {label_studio.legacy_token}") == 401


def test_legacy_token_accepted_when_enabled(
    label_studio_legacy: LabelStudioInstance,
    make_label_studio_client: Callable[..., LabelStudio],
) -> None:
    settings = _jwt_settings(label_studio_legacy)
    legacy_client = make_label_studio_client(
        label_studio_legacy, api_key=label_studio_legacy.legacy_token
    )

    assert settings["legacy_api_tokens_enabled"] is True
    assert _whoami_status(label_studio_legacy, f"Token {label_studio_legacy.legacy_token}") == 200
    assert legacy_client.users.whoami().email == label_studio_legacy.email


def test_pat_rejected_as_bearer(label_studio: LabelStudioInstance) -> None:
    # Only the access JWT from /api/token/refresh/ works as a Bearer token.
    assert _whoami_status(label_studio, f"Bearer {label_studio.pat}") == 401


def test_image_upload_and_download(
    label_studio: LabelStudioInstance,
    label_studio_client: LabelStudio,
    thumbnail_path: Path,
) -> None:
    assert label_studio.pat is not None
    project = label_studio_client.projects.create(
        title="harness smoke test", label_config=LABEL_CONFIG
    )
    assert project.id is not None

    task_ids = import_files(label_studio_client, project.id, [thumbnail_path])
    assert len(task_ids) == 1

    task = label_studio_client.tasks.get(str(task_ids[0]))
    image_url = task.data["image"]
    assert image_url.startswith(f"/data/upload/{project.id}/")
    assert image_url.endswith(thumbnail_path.name)
    upload_dir = label_studio.data_dir / "media" / "upload" / str(project.id)
    stored_file = upload_dir / Path(image_url).name
    assert stored_file.is_file()

    download_url = f"{label_studio.base_url}{image_url}"
    anonymous = requests.get(download_url, timeout=HTTP_TIMEOUT_S)
    assert anonymous.status_code == 401

    response = requests.get(
        download_url,
        headers=bearer_headers(label_studio.base_url, label_studio.pat),
        timeout=HTTP_TIMEOUT_S,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    assert response.content == thumbnail_path.read_bytes()


def test_two_files_create_two_tasks(
    label_studio_client: LabelStudio, thumbnail_paths: list[Path]
) -> None:
    project = label_studio_client.projects.create(
        title="harness two files", label_config=LABEL_CONFIG
    )
    assert project.id is not None

    task_ids = import_files(label_studio_client, project.id, thumbnail_paths)
    images = [label_studio_client.tasks.get(str(task_id)).data["image"] for task_id in task_ids]

    assert len(set(task_ids)) == 2
    assert images[0].endswith(thumbnail_paths[0].name)
    assert images[1].endswith(thumbnail_paths[1].name)


def test_server_env_drops_stray_variables(tmp_path: Path) -> None:
    stray = {
        "PATH": "/usr/bin",
        "USERNAME": "someone",
        "PASSWORD": "stray-password",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "HEARTEX_DEBUG": "1",
        "DEBUG": "1",
        "DJANGO_DB": "postgresql",
        "http_proxy": "http://127.0.0.1:9",
        "LC_ALL": "C.UTF-8",
    }

    env = build_server_env(
        data_dir=tmp_path / "data",
        document_root=tmp_path / "files",
        email="admin@example.com",
        password="secret-password",
        legacy_token="legacy-token-123",
        base_url="http://127.0.0.1:8080",
        base_env=stray,
    )

    for name in (
        "USERNAME",
        "PASSWORD",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK",
        "HEARTEX_DEBUG",
    ):
        assert name not in env
    for name in ("DEBUG", "DJANGO_DB", "http_proxy"):
        assert name not in env
    assert env["PATH"] == "/usr/bin"
    assert env["LC_ALL"] == "C.UTF-8"
    assert env["LABEL_STUDIO_USERNAME"] == "admin@example.com"
    assert env["LABEL_STUDIO_USER_TOKEN"] == "legacy-token-123"
    assert env["ML_BLOCK_LOCAL_IP"] == "false"
    assert env["SSRF_PROTECTION_ENABLED"] == "false"


def test_install_rejects_foreign_directory(tmp_path: Path) -> None:
    foreign = tmp_path / "not-a-venv"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me", encoding="utf-8")

    with pytest.raises(LabelStudioError, match="is not a virtual environment"):
        ensure_label_studio_installed(venv_dir=foreign)
    assert (foreign / "notes.txt").is_file()


def test_start_rejects_short_legacy_token(tmp_path: Path) -> None:
    with pytest.raises(LabelStudioError, match="5 characters or fewer"):
        start_label_studio(tmp_path / "label-studio", data_dir=tmp_path, legacy_token="short")
