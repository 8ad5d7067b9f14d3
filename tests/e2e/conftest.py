"""Session fixtures that run a real Label Studio server for the end-to-end tests.

Every test under ``tests/e2e`` gets the ``e2e`` marker. Set ``SKIP_E2E=1`` to skip them.
Otherwise a missing install or a server that does not start makes them fail, not skip.
The first run installs Label Studio into ``.cache/label-studio-venv`` (about 1 GB), or
into the directory named by ``LABEL_STUDIO_VENV``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from label_studio_sdk import LabelStudio

from .label_studio import (
    LabelStudioInstance,
    create_sdk_client,
    ensure_label_studio_installed,
    launch_label_studio,
)

logger = logging.getLogger(__name__)

E2E_DIR = Path(__file__).resolve().parent
SKIP_E2E_VALUES = frozenset({"1", "true", "yes"})


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``e2e`` marker."""
    config.addinivalue_line(
        "markers", "e2e: end-to-end test against a real Label Studio server (skip with SKIP_E2E=1)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests under ``tests/e2e`` as ``e2e`` and skip them when ``SKIP_E2E=1``."""
    skip_value = os.environ.get("SKIP_E2E", "").strip().lower()
    skip = pytest.mark.skip(reason=f"SKIP_E2E={skip_value} is set; unset it to run the e2e tests")
    for item in items:
        # This hook receives the items of the whole session, not only those in this directory.
        if not item.path.resolve().is_relative_to(E2E_DIR):
            continue
        item.add_marker(pytest.mark.e2e)
        if skip_value in SKIP_E2E_VALUES:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def label_studio_executable() -> Path:
    """Path of the ``label-studio`` script, installed on first use."""
    return ensure_label_studio_installed()


@pytest.fixture(scope="session")
def label_studio_document_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory that the shared server serves under ``/data/local-files/``.

    Override this fixture to serve another directory.
    """
    return tmp_path_factory.mktemp("label-studio-files")


@pytest.fixture(scope="session")
def label_studio(
    label_studio_executable: Path,
    label_studio_document_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LabelStudioInstance]:
    """Label Studio server shared by the session, with legacy tokens off and a PAT.

    The data directory is a pytest temporary directory, so its ``label-studio.log``
    remains for inspection after the run.
    """
    server = launch_label_studio(
        label_studio_executable,
        data_dir=tmp_path_factory.mktemp("label-studio-data"),
        document_root=label_studio_document_root,
    )
    try:
        yield server.instance
    finally:
        server.stop()


@pytest.fixture(scope="session")
def label_studio_legacy(
    label_studio_executable: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LabelStudioInstance]:
    """Second Label Studio server with legacy ``Token`` authentication enabled.

    It starts only when a test requests it, because a first start takes about 25 s,
    and it leaves the legacy-token setting of the shared ``label_studio`` server alone.
    """
    server = launch_label_studio(
        label_studio_executable,
        legacy_tokens=True,
        data_dir=tmp_path_factory.mktemp("label-studio-legacy-data"),
        document_root=tmp_path_factory.mktemp("label-studio-legacy-files"),
    )
    try:
        yield server.instance
    finally:
        server.stop()


@pytest.fixture(scope="session")
def make_label_studio_client() -> Callable[..., LabelStudio]:
    """Factory ``(instance, api_key=None) -> LabelStudio``. The key defaults to the PAT."""
    return create_sdk_client


@pytest.fixture(scope="session")
def label_studio_client(label_studio: LabelStudioInstance) -> LabelStudio:
    """SDK client for the shared server, authenticated with its PAT."""
    return create_sdk_client(label_studio)
