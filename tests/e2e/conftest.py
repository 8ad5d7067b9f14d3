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

from tests.servers import STARTED_LOGS, STARTED_SECRETS

from .label_studio import (
    LabelStudioInstance,
    create_sdk_client,
    ensure_label_studio_installed,
    launch_label_studio,
)

logger = logging.getLogger(__name__)

E2E_DIR = Path(__file__).resolve().parent
SKIP_E2E_VALUES = frozenset({"1", "true", "yes"})


class LogSecrets:
    """The log files written during the session and the secret values none of them may contain.

    The Label Studio fixtures add their server's log, admin password, legacy token and PAT.
    Backends and workers started through ``tests.servers`` add their logs and their
    ``LABEL_STUDIO_API_KEY`` and ``BASIC_AUTH_PASS`` values there. ``test_zz_log_secrets_e2e.py``
    sorts last in this directory, so it runs after every other e2e module and reads them all.
    """

    def __init__(self) -> None:
        self._logs: list[Path] = []
        self._secrets: dict[str, str] = {}

    def add_label_studio(self, instance: LabelStudioInstance, name: str) -> None:
        self._logs.append(instance.log_path)
        for kind, value in (("admin password", instance.password), ("legacy token", instance.legacy_token),
                            ("personal access token", instance.pat)):
            if value:
                self._secrets[value] = f"{name}'s {kind}"

    def add_secret(self, value: str, description: str) -> None:
        self._secrets[value] = description

    def logs(self) -> list[Path]:
        """Return every registered log file, in registration order, without repeats."""
        return list(dict.fromkeys([*self._logs, *STARTED_LOGS]))

    def secrets(self) -> dict[str, str]:
        """Return secret value -> what it is (for messages that name the secret, never show it)."""
        started = {value: "a LABEL_STUDIO_API_KEY or BASIC_AUTH_PASS given to a started process"
                   for value in STARTED_SECRETS}
        return {**started, **self._secrets}


LOG_SECRETS = LogSecrets()


@pytest.fixture(scope="session")
def log_secrets() -> LogSecrets:
    """The session's registry of log files and secret values, see ``LogSecrets``."""
    return LOG_SECRETS


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
    LOG_SECRETS.add_label_studio(server.instance, "the shared Label Studio")
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
    LOG_SECRETS.add_label_studio(server.instance, "the legacy-token Label Studio")
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
