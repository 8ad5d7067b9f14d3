"""``thumbnail-ml demo`` as a user runs it: a real Label Studio 1.23.2, the backend, a worker and Redis.

The demo runs as a subprocess on ports chosen here, over five real thumbnails. The test reads
its printed address and login, checks the project through the SDK, stops it with SIGINT and
checks that every process it started is gone. A second run over the same state directory must
reuse the user, the project and the ML backend connection.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from label_studio_sdk import LabelStudio

from tests.servers import free_port, process_table
from tests.support import REPO_ROOT, THUMBNAIL_IMAGES

IMAGES = sorted((THUMBNAIL_IMAGES / "Cengineer00__thumbnail-scorer").glob("*.jpg"))[:5]
# A first start runs Label Studio's migrations (23-41 s on a 2-core machine), and an install
# before it took another 65 s.
READY_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 90.0
ADDRESS = re.compile(r"Label Studio is running at (http://127\.0\.0\.1:\d+)/projects/(\d+)/data")
LOGIN = re.compile(r"login:\s+(\S+)\s+password:\s+(\S+)")


class DemoRun:
    """A ``thumbnail-ml demo`` subprocess and its output, read by a thread so that pipes never fill."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self) -> tuple[str, int]:
        """Wait for the printed address, and return the Label Studio URL and the project id."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            found = ADDRESS.search(self.output())
            if found and "Press Ctrl-C" in self.output():
                return found.group(1), int(found.group(2))
            if self.process.poll() is not None:
                pytest.fail(f"the demo exited with code {self.process.returncode}:\n{self.output()[-4000:]}")
            time.sleep(0.5)
        pytest.fail(f"the demo printed no address within {READY_TIMEOUT_S:.0f} s:\n{self.output()[-4000:]}")

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        finally:
            self._reader.join(timeout=5)

    def stop(self, started: dict[int, tuple[int, str]]) -> None:
        """Stop the demo after a failed check: SIGINT first, then SIGKILL for what it left running.

        Killing only the demo process would orphan Label Studio, the backend, the worker and
        Redis, which run in process groups of their own.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _descendants(root: int) -> dict[int, tuple[int, str]]:
    """Return pid -> (session id, command line) of every process below ``root``."""
    processes = process_table()
    below: dict[int, tuple[int, str]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, session, command) in processes.items():
            if ppid == parent and pid not in below:
                below[pid] = (session, command)
                frontier.append(pid)
    return below


def _left_over(started: dict[int, tuple[int, str]]) -> list[str]:
    """Return the processes still running that were started by the demo or share a session with one."""
    sessions = {session for session, _ in started.values()}
    return [f"{pid} {command}" for pid, (_, session, command) in process_table().items()
            if pid in started or session in sessions]


@pytest.fixture
def demo_env(tmp_path) -> dict[str, str]:
    """The environment of the demo, with its own Redis port so that it starts redis-server."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("LABEL_STUDIO_") and key not in ("MODEL_DIR", "PORT", "HOST")}
    env["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    env["LOG_LEVEL"] = "INFO"
    return env


def _demo_command(images: Path, state: Path, label_studio_port: int, backend_port: int) -> list[str]:
    return [sys.executable, "-m", "thumbnail_ml", "demo", "--images", str(images), "--state-dir", str(state),
            "--port", str(label_studio_port), "--backend-port", str(backend_port)]


def test_demo_starts_connects_and_stops(tmp_path, demo_env):
    assert len(IMAGES) == 5
    images = tmp_path / "thumbnails"
    images.mkdir()
    for path in IMAGES:
        shutil.copy(path, images / path.name)
    state = tmp_path / "state"

    # All runs use one Label Studio port, because the tasks store absolute image URLs on it. The
    # second run keeps the backend port, so the demo updates the connected backend; the third
    # moves it, so the demo replaces the backend and its webhook.
    label_studio_port = free_port()
    first_backend_port = free_port()
    project_ids = []
    for run_number, backend_port in enumerate((first_backend_port, first_backend_port, free_port()), start=1):
        command = _demo_command(images, state, label_studio_port, backend_port)
        demo = DemoRun(command, demo_env)
        started: dict[int, tuple[int, str]] = {}
        try:
            base_url, project_id = demo.wait_ready()
            started = _descendants(demo.process.pid)
            project_ids.append(project_id)
            output = demo.output()
            if run_number == 1:
                assert "predictions appear after the first training" in output
            login = LOGIN.search(output)
            assert login, output
            email, password = login.groups()
            saved = json.loads((state / "demo.json").read_text())
            assert (saved["email"], saved["password"]) == (email, password)
            assert (state / "demo.json").stat().st_mode & 0o077 == 0
            assert saved["secret_key"]

            client = LabelStudio(base_url=base_url, api_key=saved["pat"])
            tasks = list(client.tasks.list(project=project_id, fields="all"))
            assert sorted(Path(task.data["image"].split("?d=")[-1]).name for task in tasks) == \
                sorted(path.name for path in IMAGES)
            backends = client.ml.list(project=project_id)
            assert len(backends) == 1
            backend_url = command[command.index("--backend-port") + 1]
            assert backends[0].url.rstrip("/") == f"http://127.0.0.1:{backend_url}"
            assert backends[0].is_interactive
            assert backends[0].state == "CO"
            webhooks = [hook.url for hook in client.webhooks.list(project=project_id)]
            assert webhooks == [f"http://127.0.0.1:{backend_url}/webhook"]

            commands = " | ".join(command for _, command in started.values())
            assert "label-studio start" in commands
            assert "thumbnail_ml serve" in commands
            assert "thumbnail_ml worker" in commands
            assert "redis-server" in commands
            assert saved["password"] not in commands

            assert demo.interrupt() == 0, demo.output()[-4000:]
        except BaseException:
            demo.stop(started)
            raise
        deadline = time.monotonic() + 10
        while _left_over(started) and time.monotonic() < deadline:
            time.sleep(0.2)
        left_over = _left_over(started)
        if left_over:
            demo.stop(started)
        assert left_over == []
        assert "stopped Label Studio" in demo.output()

    assert len(set(project_ids)) == 1

    other_port = _demo_command(images, state, free_port(), free_port())
    rejected = subprocess.run(other_port, cwd=REPO_ROOT, env=demo_env, capture_output=True, text=True, timeout=120)
    assert rejected.returncode != 0
    assert f"--port {label_studio_port}" in rejected.stdout + rejected.stderr
