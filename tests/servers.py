"""Start the real backend server (``thumbnail-ml serve`` under gunicorn) for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.support import REPO_ROOT

STARTUP_TIMEOUT_S = 60.0
# Environment variables whose values must never appear in a log.
SECRET_ENV_NAMES = ("LABEL_STUDIO_API_KEY", "BASIC_AUTH_PASS")
# Every log file written by a process started here, and the secret values each process got.
# The e2e session checks them all for leaked secrets (tests/e2e/test_zz_log_secrets_e2e.py).
STARTED_LOGS: list[Path] = []
STARTED_SECRETS: set[str] = set()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class BackendProcess:
    """A running ``thumbnail-ml serve`` process and where to reach it."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop gunicorn and its workers (the process group this helper started)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def _register_log(env: dict[str, str], log_path: Path) -> None:
    STARTED_LOGS.append(Path(log_path))
    STARTED_SECRETS.update(env[name] for name in SECRET_ENV_NAMES if env.get(name))


def start_backend(env: dict[str, str], log_path: Path, port: int | None = None) -> BackendProcess:
    """Start the server with ``env`` added to this process's environment and wait for /health."""
    port = port or free_port()
    full_env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), **env}
    _register_log(full_env, log_path)
    handle = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "thumbnail_ml", "serve"], cwd=REPO_ROOT, env=full_env,
        stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
    )
    handle.close()
    server = BackendProcess(process, f"http://127.0.0.1:{port}", log_path)
    credentials = full_env.get("BASIC_AUTH_USER"), full_env.get("BASIC_AUTH_PASS")
    auth = credentials if all(credentials) else None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"backend exited with {process.returncode}:\n{server.log()[-3000:]}")
        try:
            if requests.get(f"{server.url}/health", timeout=1, auth=auth).ok:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"backend did not answer /health within {STARTUP_TIMEOUT_S} s:\n{server.log()[-3000:]}")


def start_worker(env: dict[str, str], log_path: Path, *args: str) -> BackendProcess:
    """Start ``thumbnail-ml worker`` with ``env`` added to this process's environment.

    ``args`` are added to the command line, for example ``--burst``.
    """
    full_env = {**os.environ, **env}
    _register_log(full_env, log_path)
    handle = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "thumbnail_ml", "worker", *args], cwd=REPO_ROOT, env=full_env,
        stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
    )
    handle.close()
    return BackendProcess(process, "", log_path)


def process_table() -> dict[int, tuple[int, int, str]]:
    """Return pid -> (parent pid, session id, command line) of the running processes, zombies left out."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name in field 2 may contain spaces, so the fields are split after its ")".
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), int(fields[3]), command)
    return table
