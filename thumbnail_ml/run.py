"""``thumbnail-ml run``: Redis (when needed), the backend and one training worker, on one machine.

Everything started here is stopped on Ctrl-C or SIGTERM, in reverse order.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

from thumbnail_ml.settings import Settings

logger = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A service could not be started; the message names it and the fix."""


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _start_redis_if_needed(settings: Settings) -> subprocess.Popen | None:
    url = urlparse(settings.redis_url)
    if url.scheme not in ("redis", "rediss"):
        return None
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    if _listening(host, port):
        logger.info("Redis is already listening on %s:%d", host, port)
        return None
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise RunError(f"nothing listens at REDIS_URL ({host}:{port}), and it is not this machine: start Redis there")
    server = shutil.which("redis-server")
    if server is None:
        raise RunError(
            f"nothing listens at REDIS_URL ({host}:{port}) and redis-server is not installed: install it "
            "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) or set REDIS_URL"
        )
    process = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not _listening("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RunError(f"redis-server did not start on port {port}")
        time.sleep(0.1)
    logger.info("started redis-server on 127.0.0.1:%d (pid %d)", port, process.pid)
    return process


def run_all(settings: Settings) -> int:
    """Start Redis if needed, the server and a worker; wait until one exits or Ctrl-C."""
    children: list[tuple[str, subprocess.Popen]] = []
    redis = _start_redis_if_needed(settings)
    if redis is not None:
        children.append(("redis-server", redis))
    command = [sys.executable, "-m", "thumbnail_ml"]
    for name, arguments in (("backend", ["serve"]), ("worker", ["worker"])):
        children.append((name, subprocess.Popen(command + arguments, start_new_session=True)))

    print(
        f"\nthumbnail-ml is running. In Label Studio, open your project's Settings > Model > Connect Model and\n"
        f"enter the backend URL http://{'localhost' if settings.host in ('127.0.0.1', '0.0.0.0') else settings.host}"
        f":{settings.port} (interactive preannotations on). Press Ctrl-C to stop.\n",
        flush=True,
    )
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    exit_code = 0
    try:
        while not stopping:
            for name, process in children:
                if process.poll() is not None:
                    logger.error("%s exited with code %s; stopping the others", name, process.returncode)
                    exit_code = 1
                    stopping = True
            time.sleep(0.5)
    finally:
        for name, process in reversed(children):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for name, process in reversed(children):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            logger.info("stopped %s", name)
    return exit_code
