"""Install, start and stop a local Label Studio server for ``thumbnail-ml demo`` and the e2e tests.

Label Studio is installed into its own virtual environment, separate from the project's,
because it pins many packages (Django, rq, redis) that must not leak into the project.
The server runs on 127.0.0.1 with a data directory chosen by the caller (a temporary one
by default) and is stopped by killing the process group that this module started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import requests

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

logger = logging.getLogger(__name__)

LABEL_STUDIO_VERSION = "1.23.2"
VENV_ENV_VAR = "LABEL_STUDIO_VENV"
HOST = "127.0.0.1"

# Written after a verified install, so an interrupted install never looks complete. The name
# dates from when only the tests installed Label Studio, and is kept so existing installs count.
INSTALL_MARKER_NAME = ".e2e-label-studio-version"
INSTALL_LOG_NAME = ".install.log"
INSTALL_TIMEOUT_S = 1800.0

# A first start on an empty data dir runs all migrations, which took 23-27 s on a 2-core machine.
DEFAULT_STARTUP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
PORT_ATTEMPTS = 3
HTTP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 40

DEFAULT_EMAIL = "admin@example.com"

# Label Studio reads each setting as LABEL_STUDIO_<NAME>, then HEARTEX_<NAME>, then the bare
# <NAME> (USERNAME, PASSWORD, HOST, PORT, DEBUG, DJANGO_DB, POSTGRE_HOST, ...). The server
# therefore gets only these variables from the caller's environment.
SERVER_ENV_PASSTHROUGH = frozenset(
    {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL", "TERM"}
)
SERVER_ENV_PASSTHROUGH_PREFIXES = ("LC_",)

# Removed from pip's environment because they would let the project's venv leak into the new one.
PYTHON_ENV_NAMES = frozenset({"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"})


class LabelStudioError(RuntimeError):
    """Failure to install, start, stop or authenticate against Label Studio."""


class PortInUseError(LabelStudioError):
    """The server's port was taken by another process before Label Studio bound it."""


@dataclasses.dataclass(frozen=True)
class LabelStudioInstance:
    """Connection details and paths of one running Label Studio server.

    Attributes:
        base_url: Server root without a trailing slash, e.g. ``http://127.0.0.1:41234``.
        email: Email (the login name) of the admin user.
        password: Password of the admin user.
        legacy_token: Legacy API token, sent as ``Authorization: Token <legacy_token>``.
            It is accepted only while legacy tokens are enabled for the organization.
        pat: Personal access token (a refresh JWT), or None if none was created.
        data_dir: Label Studio base data directory (SQLite database, uploads, log).
        document_root: Directory served under ``/data/local-files/``.
        log_path: File that receives the server's stdout and stderr.
    """

    base_url: str
    email: str
    password: str
    legacy_token: str
    pat: str | None
    data_dir: Path
    document_root: Path
    log_path: Path

    def __repr__(self) -> str:
        # Leaves out the password and tokens so that they stay out of failure output and logs.
        return (
            f"LabelStudioInstance(base_url={self.base_url!r}, email={self.email!r}, "
            f"data_dir={str(self.data_dir)!r}, document_root={str(self.document_root)!r})"
        )


def repo_root() -> Path:
    """Return the repository root, the parent of this file's directory."""
    return Path(__file__).resolve().parents[1]


def default_venv_dir() -> Path:
    """Return the Label Studio venv path from ``LABEL_STUDIO_VENV`` or the repo cache."""
    override = os.environ.get(VENV_ENV_VAR)
    if override:
        return Path(override).expanduser().resolve()
    return repo_root() / ".cache" / "label-studio-venv"


def _read_marker(venv_dir: Path) -> str | None:
    try:
        return (venv_dir / INSTALL_MARKER_NAME).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"<could not read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _pip_env(base: Mapping[str, str]) -> dict[str, str]:
    """Copy ``base`` without the variables that point Python at another environment."""
    env = {name: value for name, value in base.items() if name not in PYTHON_ENV_NAMES}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


@contextlib.contextmanager
def _install_lock(venv_dir: Path) -> Iterator[None]:
    """Hold an exclusive file lock so that parallel runs do not install at the same time."""
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv_dir.parent / f".{venv_dir.name}.lock"
    with open(lock_path, "w", encoding="utf-8") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _remove_incomplete_venv(venv_dir: Path) -> None:
    """Delete a venv left by an interrupted install, and raise for any other directory."""
    if not venv_dir.exists():
        return
    is_empty_dir = venv_dir.is_dir() and not any(venv_dir.iterdir())
    if not is_empty_dir and not (venv_dir / "pyvenv.cfg").is_file():
        raise LabelStudioError(
            f"{venv_dir} exists but is not a virtual environment, so it was not replaced. "
            f"Remove it or point {VENV_ENV_VAR} at another directory."
        )
    logger.info("Removing incomplete Label Studio venv at %s", venv_dir)
    shutil.rmtree(venv_dir)


def ensure_label_studio_installed(
    venv_dir: Path | None = None,
    python: str = "python3",
    version: str = LABEL_STUDIO_VERSION,
) -> Path:
    """Install Label Studio into its own venv unless a finished install is already there.

    A marker file with the version is written only after pip succeeded and the installed
    version was checked. A venv without a matching marker is deleted and rebuilt.
    The venv takes about 1 GB. Installing took 54-65 s on a 2-core machine with a local
    package index. A finished install is found in about 0.1 s.

    Args:
        venv_dir: Target venv. Defaults to :func:`default_venv_dir`.
        python: Interpreter used to create the venv, looked up on PATH.
        version: Label Studio version to install.

    Returns:
        Path of the ``label-studio`` executable in the venv.

    Raises:
        LabelStudioError: If the interpreter is missing, pip fails or the installed
            version differs from ``version``.
    """
    venv_dir = (venv_dir or default_venv_dir()).resolve()
    executable = venv_dir / "bin" / "label-studio"

    with _install_lock(venv_dir):
        if _read_marker(venv_dir) == version and executable.is_file():
            logger.debug("Label Studio %s is already installed in %s", version, venv_dir)
            return executable

        python_path = shutil.which(python)
        if python_path is None:
            raise LabelStudioError(
                f"Interpreter {python!r} was not found on PATH, but it is needed to create the "
                f"Label Studio venv at {venv_dir}. Install Python 3.11 or set PATH."
            )

        _remove_incomplete_venv(venv_dir)
        started = time.monotonic()
        logger.info("Installing label-studio==%s into %s with %s", version, venv_dir, python_path)

        env = _pip_env(os.environ)
        install_log = venv_dir.parent / f".{venv_dir.name}{INSTALL_LOG_NAME}"
        venv_python = venv_dir / "bin" / "python"
        commands = [
            [python_path, "-m", "venv", str(venv_dir)],
            [str(venv_python), "-m", "pip", "install", f"label-studio=={version}"],
        ]
        with open(install_log, "w", encoding="utf-8") as log_file:
            for command in commands:
                _run_logged(command, env, log_file, install_log)

        installed = _installed_version(venv_python, env)
        if installed != version:
            raise LabelStudioError(
                f"pip installed label-studio {installed!r} into {venv_dir}, expected {version!r}. "
                f"Check the pip constraints and the log at {install_log}."
            )
        if not executable.is_file():
            raise LabelStudioError(
                f"label-studio {version} was installed but {executable} is missing. "
                f"Delete {venv_dir} and try again."
            )

        # Write then rename, so a crash cannot leave a half-written marker.
        marker_tmp = venv_dir / f"{INSTALL_MARKER_NAME}.tmp"
        marker_tmp.write_text(version + "\n", encoding="utf-8")
        os.replace(marker_tmp, venv_dir / INSTALL_MARKER_NAME)
        logger.info("Installed label-studio==%s in %.1f s", version, time.monotonic() - started)
        return executable


def _run_logged(
    command: list[str], env: Mapping[str, str], log_file: TextIO, log_path: Path
) -> None:
    """Run ``command`` with its output appended to ``log_file``.

    Raises:
        LabelStudioError: If the command fails or times out. The message contains the
            last lines of ``log_path``.
    """
    try:
        subprocess.run(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except subprocess.CalledProcessError as exc:
        raise LabelStudioError(
            f"Command {command} failed with exit code {exc.returncode}. "
            f"Last lines of {log_path}:\n{_tail(log_path)}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise LabelStudioError(
            f"Command {command} timed out after {INSTALL_TIMEOUT_S:.0f} s. "
            f"Last lines of {log_path}:\n{_tail(log_path)}"
        ) from exc


def _installed_version(venv_python: Path, env: Mapping[str, str]) -> str:
    result = subprocess.run(
        [
            str(venv_python),
            "-c",
            "import importlib.metadata as m; print(m.version('label-studio'))",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise LabelStudioError(
            f"Could not read the label-studio version with {venv_python}: {result.stderr.strip()}"
        )
    return result.stdout.strip()


def find_free_port(host: str = HOST) -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    Another process may take the port before the server binds it, so
    :func:`start_label_studio` retries with a new port when that happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def build_server_env(
    *,
    data_dir: Path,
    document_root: Path,
    email: str,
    password: str,
    legacy_token: str,
    base_url: str,
    base_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Build the child environment for ``label-studio start``.

    Only the variables in :data:`SERVER_ENV_PASSTHROUGH` (and ``LC_*``) are copied from
    ``base_env``, so stray ``LABEL_STUDIO_*``, ``HEARTEX_*``, ``USERNAME``, ``PASSWORD``,
    proxy and Python variables never reach the server. Then the settings for an offline
    server that accepts ML backends and webhooks on 127.0.0.1 are added.

    Args:
        data_dir: Value of ``LABEL_STUDIO_BASE_DATA_DIR``.
        document_root: Value of ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``.
        email: Admin login, ``LABEL_STUDIO_USERNAME``.
        password: Admin password, ``LABEL_STUDIO_PASSWORD``.
        legacy_token: Admin legacy token, ``LABEL_STUDIO_USER_TOKEN``.
        base_url: Server URL, sent to ML backends as ``hostname`` in ``/setup``.
        base_env: Environment to copy from. Defaults to ``os.environ``.
    """
    source = os.environ if base_env is None else base_env
    env = {
        name: value
        for name, value in source.items()
        if name in SERVER_ENV_PASSTHROUGH or name.startswith(SERVER_ENV_PASSTHROUGH_PREFIXES)
    }
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
            "LABEL_STUDIO_USERNAME": email,
            "LABEL_STUDIO_PASSWORD": password,
            "LABEL_STUDIO_USER_TOKEN": legacy_token,
            # Sent to ML backends as "hostname" in /setup. The default, http://localhost:<port>,
            # may resolve to ::1, where this server does not listen.
            "LABEL_STUDIO_HOST": base_url,
            # Without these two, Label Studio rejects ML backends and webhooks on 127.0.0.1
            # as reserved addresses.
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class LabelStudioServer:
    """A ``label-studio start`` process in its own process group.

    Use :func:`start_label_studio` to create one. :meth:`stop` kills only the process
    group that was started here.
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        instance: LabelStudioInstance,
        owned_dirs: tuple[Path, ...] = (),
    ) -> None:
        """Wrap a started process.

        Args:
            process: The server process, started with ``start_new_session=True``.
            instance: Connection details of the server.
            owned_dirs: Temporary directories that :meth:`stop` deletes.
        """
        self.process = process
        self.instance = instance
        self._owned_dirs = owned_dirs
        self._stopped = False

    @property
    def pid(self) -> int:
        """Process id of the server, which is also its process group id."""
        return self.process.pid

    def with_pat(self, pat: str) -> LabelStudioInstance:
        """Store ``pat`` in :attr:`instance` and return the updated instance."""
        self.instance = dataclasses.replace(self.instance, pat=pat)
        return self.instance

    def stop(self, timeout: float = STOP_TIMEOUT_S, *, remove_dirs: bool = True) -> None:
        """Send SIGTERM to the server's process group, then SIGKILL after ``timeout`` s.

        A second call sends no signals. It only deletes directories that an earlier
        call kept.

        Args:
            timeout: Seconds to wait for the exit after each signal.
            remove_dirs: Whether to delete the temporary directories that
                :func:`start_label_studio` created, after the process exited.
        """
        if not self._stopped:
            self._stopped = True
            self._terminate_group(timeout)

        if remove_dirs:
            for directory in self._owned_dirs:
                shutil.rmtree(directory, ignore_errors=True)
            self._owned_dirs = ()

    def _terminate_group(self, timeout: float) -> None:
        if self.process.poll() is None:
            logger.info("Stopping Label Studio (pid %d) at %s", self.pid, self.instance.base_url)
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "Label Studio (pid %d) did not exit %.0f s after SIGTERM; sending SIGKILL",
                    self.pid,
                    timeout,
                )
                _signal_group(self.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
        # Children that outlived the leader still carry its group id.
        _signal_group(self.pid, signal.SIGKILL)

    def __enter__(self) -> LabelStudioServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def start_label_studio(
    executable: Path,
    *,
    data_dir: Path | None = None,
    document_root: Path | None = None,
    email: str = DEFAULT_EMAIL,
    password: str | None = None,
    legacy_token: str | None = None,
    port: int | None = None,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
    extra_env: Mapping[str, str] | None = None,
) -> LabelStudioServer:
    """Start Label Studio on 127.0.0.1 and wait until ``GET /health`` reports UP.

    Legacy API tokens stay disabled, which is the default for a new organization.

    Args:
        executable: The ``label-studio`` script from :func:`ensure_label_studio_installed`.
        data_dir: Base data directory. A new temporary directory if None; it is then
            deleted by :meth:`LabelStudioServer.stop`.
        document_root: Directory served under ``/data/local-files/``. A new temporary
            directory if None, deleted on stop like ``data_dir``.
        email: Login email of the admin user created on first start.
        password: Admin password. Random if None.
        legacy_token: Legacy API token of the admin, longer than 5 characters because
            Label Studio ignores shorter ones. Random if None.
        port: TCP port. If None, a free port is picked, and another one if that was
            taken in the meantime.
        startup_timeout: Seconds to wait for ``/health``.
        extra_env: Variables added to the server environment after the defaults.

    Returns:
        The running server. Call :meth:`LabelStudioServer.stop` when done.

    Raises:
        PortInUseError: If the port is taken (after the last retry when ``port`` is None).
        LabelStudioError: If ``legacy_token`` is too short, or the server exits or is not
            healthy within ``startup_timeout``. The message contains the log tail.
    """
    password = password or secrets.token_urlsafe(18)
    legacy_token = legacy_token or secrets.token_hex(20)
    if len(legacy_token) <= 5:
        raise LabelStudioError(
            f"legacy_token has {len(legacy_token)} characters, but Label Studio ignores "
            "tokens of 5 characters or fewer. Pass a longer token."
        )

    owned_dirs: list[Path] = []
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="label-studio-data-"))
        owned_dirs.append(data_dir)
    if document_root is None:
        document_root = Path(tempfile.mkdtemp(prefix="label-studio-files-"))
        owned_dirs.append(document_root)
    data_dir = data_dir.resolve()
    document_root = document_root.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    document_root.mkdir(parents=True, exist_ok=True)

    # A port picked here can be taken before the server binds it, so retry with another.
    attempts = 1 if port else PORT_ATTEMPTS
    for attempt in range(1, attempts + 1):
        server = _spawn_server(
            executable,
            port=port or find_free_port(),
            data_dir=data_dir,
            document_root=document_root,
            email=email,
            password=password,
            legacy_token=legacy_token,
            extra_env=extra_env,
            owned_dirs=tuple(owned_dirs),
        )
        started = time.monotonic()
        try:
            wait_for_health(server, startup_timeout)
        except PortInUseError:
            # The directories stay so that the log named in the error can still be read.
            server.stop(remove_dirs=False)
            if attempt == attempts:
                raise
            logger.warning(
                "Port of %s was in use (attempt %d of %d); retrying on another port",
                server.instance.base_url,
                attempt,
                attempts,
            )
            continue
        except BaseException:
            server.stop(remove_dirs=False)
            raise
        logger.info(
            "Label Studio (pid %d) is up at %s after %.1f s",
            server.pid,
            server.instance.base_url,
            time.monotonic() - started,
        )
        return server
    raise AssertionError("unreachable: the last attempt returns or raises")


def _spawn_server(
    executable: Path,
    *,
    port: int,
    data_dir: Path,
    document_root: Path,
    email: str,
    password: str,
    legacy_token: str,
    extra_env: Mapping[str, str] | None,
    owned_dirs: tuple[Path, ...],
) -> LabelStudioServer:
    """Launch ``label-studio start`` on ``port`` without waiting for it."""
    base_url = f"http://{HOST}:{port}"
    log_path = data_dir / "label-studio.log"
    env = build_server_env(
        data_dir=data_dir,
        document_root=document_root,
        email=email,
        password=password,
        legacy_token=legacy_token,
        base_url=base_url,
    )
    if extra_env:
        env.update(extra_env)

    instance = LabelStudioInstance(
        base_url=base_url,
        email=email,
        password=password,
        legacy_token=legacy_token,
        pat=None,
        data_dir=data_dir,
        document_root=document_root,
        log_path=log_path,
    )
    command = [str(executable), "start", "--no-browser", "--internal-host", HOST, "-p", str(port)]
    logger.info("Starting Label Studio at %s with data dir %s", base_url, data_dir)
    with open(log_path, "ab") as log_file:
        # A new session makes the server the leader of its own process group, so stop()
        # can signal it and any children without touching other processes.
        process = subprocess.Popen(
            command,
            cwd=data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return LabelStudioServer(process, instance, owned_dirs)


def wait_for_health(server: LabelStudioServer, timeout: float) -> None:
    """Poll ``GET /health`` until it returns ``{"status": "UP"}``.

    Raises:
        PortInUseError: If the server log reports that its port is taken.
        LabelStudioError: If the process exits or ``timeout`` s pass first. The message
            contains the last lines of the server log.
    """
    url = f"{server.instance.base_url}/health"
    log_path = server.instance.log_path
    port = urllib.parse.urlsplit(server.instance.base_url).port
    # label-studio start moves to port + 1 when something listens on the requested port,
    # and Django's runserver exits when the port is bound but not listening.
    port_conflicts = (f"Port {port} is in use", "That port is already in use")
    deadline = time.monotonic() + timeout
    last_problem = "no response yet"
    while time.monotonic() < deadline:
        log_text = (
            log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
        )
        if any(conflict in log_text for conflict in port_conflicts):
            raise PortInUseError(
                f"Port {port} was already in use when Label Studio started. "
                f"Last lines of {log_path}:\n{_tail(log_path)}"
            )
        exit_code = server.process.poll()
        if exit_code is not None:
            raise LabelStudioError(
                f"Label Studio exited with code {exit_code} before {url} was healthy. "
                f"Last lines of {server.instance.log_path}:\n{_tail(server.instance.log_path)}"
            )
        try:
            response = requests.get(url, timeout=5)
            if response.status_code == 200 and response.json().get("status") == "UP":
                return
            last_problem = f"HTTP {response.status_code}: {response.text[:200]}"
        except (requests.RequestException, ValueError) as exc:
            last_problem = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise LabelStudioError(
        f"Label Studio at {url} was not healthy within {timeout:.0f} s "
        f"(last result: {last_problem}). Raise startup_timeout on a slow machine. "
        f"Last lines of {server.instance.log_path}:\n{_tail(server.instance.log_path)}"
    )


_CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken"\s+value="([^"]+)"')


def login_session(base_url: str, email: str, password: str) -> requests.Session:
    """Log in through the ``/user/login/`` form and return the authenticated session.

    The session sends the CSRF header that Django requires for unsafe methods under
    session authentication, so it can POST to the API directly.

    Raises:
        LabelStudioError: If the login page has no CSRF token or the login is rejected.
    """
    session = requests.Session()
    login_url = f"{base_url}/user/login/"
    page = session.get(login_url, timeout=HTTP_TIMEOUT_S)
    page.raise_for_status()
    match = _CSRF_INPUT.search(page.text)
    form_token = match.group(1) if match else session.cookies.get("csrftoken")
    if not form_token:
        raise LabelStudioError(
            f"{login_url} returned no CSRF token (no csrfmiddlewaretoken field or csrftoken "
            "cookie), so the session login cannot be posted."
        )

    response = session.post(
        login_url,
        data={"email": email, "password": password, "csrfmiddlewaretoken": form_token},
        headers={"Referer": login_url},
        timeout=HTTP_TIMEOUT_S,
        allow_redirects=False,
    )
    whoami = session.get(f"{base_url}/api/current-user/whoami", timeout=HTTP_TIMEOUT_S)
    if whoami.status_code != 200:
        raise LabelStudioError(
            f"Session login as {email!r} at {login_url} failed. The form returned HTTP "
            f"{response.status_code} and /api/current-user/whoami returned HTTP "
            f"{whoami.status_code}. Check the email and password the server was started with."
        )

    # Django rotates the CSRF secret at login, so read the cookie only now.
    session.headers["X-CSRFToken"] = session.cookies.get("csrftoken") or ""
    session.headers["Referer"] = f"{base_url}/"
    return session


def create_personal_access_token(base_url: str, email: str, password: str) -> str:
    """Create a personal access token (PAT) for the user through a session login.

    ``POST /api/token/`` needs an authenticated caller. A session login works while
    legacy tokens are disabled, which is the default for a new organization.

    Returns:
        The PAT, a refresh JWT that the SDK accepts as ``api_key``.

    Raises:
        LabelStudioError: If the login fails or the user already has a PAT, because
            Label Studio allows one PAT per user.
    """
    with login_session(base_url, email, password) as session:
        response = session.post(f"{base_url}/api/token/", json={}, timeout=HTTP_TIMEOUT_S)
    if response.status_code == 409:
        raise LabelStudioError(
            f"User {email!r} at {base_url} already has a personal access token, and Label "
            "Studio allows one per user. Revoke it in the account settings or rotate it "
            "with POST /api/token/rotate/."
        )
    if response.status_code != 201:
        raise LabelStudioError(
            f"POST {base_url}/api/token/ returned HTTP {response.status_code}, expected 201: "
            f"{response.text[:300]}"
        )
    return str(response.json()["token"])


def fetch_access_token(base_url: str, pat: str) -> str:
    """Exchange a PAT for a short-lived access JWT via ``POST /api/token/refresh/``.

    Label Studio 1.23.2 accepts ``Authorization: Bearer <access JWT>`` but rejects the
    PAT itself in that header. The access JWT expires after 5 minutes.

    Raises:
        LabelStudioError: If the exchange fails.
    """
    response = requests.post(
        f"{base_url}/api/token/refresh/", json={"refresh": pat}, timeout=HTTP_TIMEOUT_S
    )
    if response.status_code != 200:
        raise LabelStudioError(
            f"POST {base_url}/api/token/refresh/ returned HTTP {response.status_code}, "
            f"expected 200: {response.text[:300]}. Check that the PAT belongs to this server."
        )
    return str(response.json()["access"])


def bearer_headers(base_url: str, pat: str) -> dict[str, str]:
    """Return an ``Authorization: Bearer`` header with a fresh access JWT for ``pat``."""
    return {"Authorization": f"Bearer {fetch_access_token(base_url, pat)}"}


def set_legacy_api_tokens(base_url: str, pat: str, *, enabled: bool) -> None:
    """Enable or disable legacy ``Token`` authentication for the user's organization.

    This calls ``POST /api/jwt/settings`` and then reads the settings back. It can run
    at any time, unlike the start flag ``--enable-legacy-api-token``, which only acts
    when the organization is created.

    Raises:
        LabelStudioError: If the update fails or the settings do not change.
    """
    url = f"{base_url}/api/jwt/settings"
    headers = bearer_headers(base_url, pat)
    body = {
        "api_tokens_enabled": True,
        "legacy_api_tokens_enabled": enabled,
        "api_token_ttl_days": 3650,
    }
    response = requests.post(url, json=body, headers=headers, timeout=HTTP_TIMEOUT_S)
    if response.status_code not in (200, 201):
        raise LabelStudioError(
            f"POST {url} with legacy_api_tokens_enabled={enabled} returned HTTP "
            f"{response.status_code}: {response.text[:300]}"
        )
    current = requests.get(url, headers=headers, timeout=HTTP_TIMEOUT_S).json()
    if current.get("legacy_api_tokens_enabled") is not enabled:
        raise LabelStudioError(
            f"GET {url} returned legacy_api_tokens_enabled="
            f"{current.get('legacy_api_tokens_enabled')!r} after setting it to {enabled}."
        )
    logger.info("Legacy API tokens %s at %s", "enabled" if enabled else "disabled", base_url)


def enable_legacy_api_tokens(base_url: str, pat: str) -> None:
    """Enable legacy ``Token`` authentication with :func:`set_legacy_api_tokens`."""
    set_legacy_api_tokens(base_url, pat, enabled=True)


def create_sdk_client(instance: LabelStudioInstance, api_key: str | None = None) -> LabelStudio:
    """Create a ``label_studio_sdk.LabelStudio`` client for ``instance``.

    Args:
        instance: The server to talk to.
        api_key: A PAT or legacy token. Defaults to ``instance.pat``. The SDK sends a
            JWT as a PAT (refreshing access tokens itself) and anything else as
            ``Token <api_key>``.

    Raises:
        LabelStudioError: If no key is given and the instance has no PAT.
    """
    from label_studio_sdk import LabelStudio

    key = api_key or instance.pat
    if not key:
        raise LabelStudioError(
            f"No API key for {instance.base_url}. Pass api_key, or create a PAT with "
            "create_personal_access_token() first."
        )
    return LabelStudio(base_url=instance.base_url, api_key=key)


def launch_label_studio(
    executable: Path,
    *,
    legacy_tokens: bool = False,
    **start_kwargs: Any,
) -> LabelStudioServer:
    """Start a server, create the admin's PAT and optionally enable legacy tokens.

    Args:
        executable: The ``label-studio`` script from :func:`ensure_label_studio_installed`.
        legacy_tokens: Whether to enable legacy ``Token`` authentication after start.
        **start_kwargs: Passed on to :func:`start_label_studio`.

    Returns:
        The running server. Its ``instance.pat`` is set.

    Raises:
        LabelStudioError: If starting, creating the PAT or enabling legacy tokens fails.
            The server is stopped before the error propagates.
    """
    server = start_label_studio(executable, **start_kwargs)
    try:
        instance = server.instance
        pat = create_personal_access_token(instance.base_url, instance.email, instance.password)
        server.with_pat(pat)
        if legacy_tokens:
            enable_legacy_api_tokens(instance.base_url, pat)
    except BaseException:
        server.stop(remove_dirs=False)
        raise
    return server


def sdk_auth_headers(client: LabelStudio) -> dict[str, str]:
    """Return the ``Authorization`` header that ``client`` would send now.

    For a PAT this is ``Bearer <access JWT>``, refreshed by the SDK when expired, and
    for a legacy key ``Token <key>``.
    """
    # NOTE: label-studio-sdk 2.1.2 has no public accessor for its auth header, so this
    # reads the private client wrapper and may break on an SDK upgrade.
    headers = client._client_wrapper.get_headers()
    return {"Authorization": headers["Authorization"]}


def import_files(client: LabelStudio, project_id: int, paths: list[Path]) -> list[int]:
    """Upload files to a project as new tasks with a multipart ``POST .../import``.

    Each file gets its own form field name, because Label Studio 1.23.2 keeps only one
    file per field name. label-studio-sdk 2.1.2 has no method for multipart imports.

    Args:
        client: SDK client whose auth is reused.
        project_id: Target project.
        paths: Files to upload, one task per file.

    Returns:
        The ids of the created tasks.

    Raises:
        LabelStudioError: If the import fails or creates a different number of tasks.
    """
    base_url = client._client_wrapper.get_base_url()
    url = f"{base_url}/api/projects/{project_id}/import"
    with contextlib.ExitStack() as stack:
        files = {
            f"file{index}": (path.name, stack.enter_context(open(path, "rb")))
            for index, path in enumerate(paths)
        }
        response = requests.post(
            url,
            params={"return_task_ids": "true"},
            files=files,
            headers=sdk_auth_headers(client),
            timeout=HTTP_TIMEOUT_S,
        )
    if response.status_code != 201:
        raise LabelStudioError(
            f"POST {url} with {len(paths)} files returned HTTP {response.status_code}, "
            f"expected 201: {response.text[:300]}"
        )
    task_ids = [int(task_id) for task_id in response.json()["task_ids"]]
    if len(task_ids) != len(paths):
        raise LabelStudioError(
            f"POST {url} created {len(task_ids)} tasks for {len(paths)} files, expected one "
            f"task per file: {response.text[:300]}"
        )
    return task_ids
