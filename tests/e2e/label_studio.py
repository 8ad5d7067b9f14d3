"""The Label Studio helpers of the end-to-end tests, re-exported from the product.

The installer and launcher live in :mod:`thumbnail_ml.label_studio_local`, because
``thumbnail-ml demo`` uses them too. The tests and benchmarks import them from here.
"""

from __future__ import annotations

from thumbnail_ml.label_studio_local import (
    DEFAULT_EMAIL,
    DEFAULT_STARTUP_TIMEOUT_S,
    HOST,
    HTTP_TIMEOUT_S,
    INSTALL_MARKER_NAME,
    LABEL_STUDIO_VERSION,
    VENV_ENV_VAR,
    LabelStudioError,
    LabelStudioInstance,
    LabelStudioServer,
    PortInUseError,
    bearer_headers,
    build_server_env,
    create_personal_access_token,
    create_sdk_client,
    default_venv_dir,
    enable_legacy_api_tokens,
    ensure_label_studio_installed,
    fetch_access_token,
    find_free_port,
    import_files,
    launch_label_studio,
    login_session,
    repo_root,
    sdk_auth_headers,
    set_legacy_api_tokens,
    start_label_studio,
    wait_for_health,
)

__all__ = [
    "DEFAULT_EMAIL",
    "DEFAULT_STARTUP_TIMEOUT_S",
    "HOST",
    "HTTP_TIMEOUT_S",
    "INSTALL_MARKER_NAME",
    "LABEL_STUDIO_VERSION",
    "VENV_ENV_VAR",
    "LabelStudioError",
    "LabelStudioInstance",
    "LabelStudioServer",
    "PortInUseError",
    "bearer_headers",
    "build_server_env",
    "create_personal_access_token",
    "create_sdk_client",
    "default_venv_dir",
    "enable_legacy_api_tokens",
    "ensure_label_studio_installed",
    "fetch_access_token",
    "find_free_port",
    "import_files",
    "launch_label_studio",
    "login_session",
    "repo_root",
    "sdk_auth_headers",
    "set_legacy_api_tokens",
    "start_label_studio",
    "wait_for_health",
]
