"""Deployment files (Dockerfile, .dockerignore, docker-compose.yml), checked without a Docker engine.

The tests parse the files and compare them with the code: the environment variables that
``Settings.from_env`` reads, the default port, the commands that ``thumbnail-ml run`` starts and
the console script in pyproject.toml. The healthcheck script of the backend image runs against
a real server, and the slow test builds the backend image's virtual environment with the
Dockerfile's own command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatch
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.servers import free_port
from tests.support import REPO_ROOT
from thumbnail_ml import run
from thumbnail_ml.settings import Settings

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
PYPROJECT = REPO_ROOT / "pyproject.toml"

TARGETS = ("backend", "worker", "worker-gpu")
APP_SERVICES = ("backend", "worker", "worker-gpu")
SERVICE_TARGETS = {"backend": "backend", "worker": "worker", "worker-gpu": "worker-gpu"}
LABEL_STUDIO_IMAGE = "heartexlabs/label-studio:1.23.2"

# Environment variables of the images that are not settings of this application, but the
# shell's, the interpreter's and pip's.
NON_SETTING_ENV_PREFIXES = ("PATH", "PYTHON", "PIP_")

# Packages that compile code. None may be installed in a final stage.
BUILD_TOOLS = frozenset({"build-essential", "gcc", "g++", "clang", "make", "cmake", "cython", "musl-dev"})
PACKAGE_INSTALL = re.compile(r"\b(?:apt-get|apt|apk|yum|dnf|microdnf)\s+(?:[-\w=]+\s+)*(?:install|add)\b(?P<rest>.*)")


# -- Dockerfile -------------------------------------------------------------------------------


@dataclass
class Instruction:
    """One Dockerfile instruction, with continuation lines joined and its here-documents."""

    keyword: str
    arguments: str
    heredocs: dict[str, str] = field(default_factory=dict)


@dataclass
class Stage:
    """A build stage: ``FROM base AS name`` and the instructions up to the next FROM."""

    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [instruction for instruction in self.instructions if instruction.keyword == keyword]


@dataclass
class Dockerfile:
    """Parsed Dockerfile: the ARGs before the first FROM, and the stages in order."""

    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage named {name!r} in {DOCKERFILE.name}: {[s.name for s in self.stages]}")

    def chain(self, name: str) -> list[Stage]:
        """Return the stages that ``name`` is built on, from the one FROM an image to ``name``."""
        chain = [self.stage(name)]
        names = {stage.name for stage in self.stages}
        while chain[0].base in names:
            chain.insert(0, self.stage(chain[0].base))
        return chain

    def base_image(self, name: str) -> str:
        """Return the image that the chain of ``name`` starts from, with global ARGs substituted."""
        image = self.chain(name)[0].base
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.global_args[m.group(1) or m.group(2)], image)


HEREDOC_START = re.compile(r"<<(-?)([\"']?)(\w+)\2")


def parse_dockerfile(text: str) -> Dockerfile:
    """Parse instructions, line continuations, comments and here-documents into stages."""
    lines = text.splitlines()
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue

        # Join continuation lines; comment lines inside an instruction are dropped, as Docker does.
        logical = line
        while logical.rstrip().endswith("\\") and index < len(lines):
            logical = logical.rstrip()[:-1]
            following = lines[index]
            index += 1
            if not following.lstrip().startswith("#"):
                logical += " " + following.strip()

        keyword, _, arguments = logical.strip().partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        for match in HEREDOC_START.finditer(instruction.arguments):
            delimiter = match.group(3)
            body = []
            while index < len(lines) and lines[index].strip() != delimiter:
                body.append(lines[index])
                index += 1
            index += 1  # the delimiter line
            instruction.heredocs[delimiter] = "\n".join(body) + "\n"

        if instruction.keyword == "FROM":
            words = [word for word in instruction.arguments.split() if not word.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(name=name, base=words[0]))
        elif not stages:
            if instruction.keyword == "ARG":
                key, _, default = instruction.arguments.partition("=")
                global_args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(global_args, stages)


def env_pairs(instruction: Instruction) -> dict[str, str]:
    """Return the variables that one ENV instruction sets (``K=V ...`` or the old ``K V`` form)."""
    words = shlex.split(instruction.arguments)
    if all("=" in word for word in words):
        return dict(word.split("=", 1) for word in words)
    return {words[0]: " ".join(words[1:])}


def effective_env(dockerfile: Dockerfile, target: str) -> dict[str, str]:
    environment: dict[str, str] = {}
    for stage in dockerfile.chain(target):
        for instruction in stage.all("ENV"):
            environment.update(env_pairs(instruction))
    return environment


def last_instruction(dockerfile: Dockerfile, target: str, keyword: str) -> Instruction | None:
    found = None
    for stage in dockerfile.chain(target):
        for instruction in stage.all(keyword):
            found = instruction
    return found


def exec_form(arguments: str) -> list[str]:
    """Parse a JSON (exec form) command; shell form is rejected, so signals reach the process."""
    try:
        command = json.loads(arguments)
    except json.JSONDecodeError:
        pytest.fail(f"{arguments!r} is not in exec form (a JSON array)")
    assert isinstance(command, list), arguments
    assert all(isinstance(word, str) for word in command), arguments
    return command


def run_without_flags(instruction: Instruction) -> str:
    """Return the shell command of a RUN instruction, without its ``--mount=...`` style flags."""
    words = instruction.arguments.split(" ")
    while words and words[0].startswith("--"):
        words.pop(0)
    return " ".join(words).strip()


def healthcheck_command(dockerfile: Dockerfile, target: str) -> list[str]:
    healthcheck = last_instruction(dockerfile, target, "HEALTHCHECK")
    assert healthcheck is not None, f"stage {target} has no HEALTHCHECK"
    words = healthcheck.arguments.split(" ")
    while words and words[0].startswith("--"):
        words.pop(0)
    assert words[0].upper() == "CMD", f"HEALTHCHECK of {target} must run a command: {healthcheck.arguments!r}"
    return exec_form(" ".join(words[1:]))


def heredoc_files(dockerfile: Dockerfile, target: str) -> dict[str, str]:
    """Return destination path -> content of the files that ``COPY <<EOF dest`` writes."""
    files = {}
    for stage in dockerfile.chain(target):
        for instruction in stage.all("COPY"):
            if instruction.heredocs:
                destination = instruction.arguments.split()[-1]
                files[destination] = next(iter(instruction.heredocs.values()))
    return files


@lru_cache(maxsize=1)
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


# -- what the code reads and runs -------------------------------------------------------------


class RecordingEnviron(Mapping):
    """An empty environment that records every variable name looked up in it."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.names.add(name)
        raise KeyError(name)

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


@lru_cache(maxsize=1)
def setting_names() -> frozenset[str]:
    """Return the environment variable names that ``Settings.from_env`` reads."""
    environ = RecordingEnviron()
    Settings.from_env(environ)
    return frozenset(environ.names)


def pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


@pytest.fixture
def launched_commands(monkeypatch, capsys) -> list[list[str]]:
    """Return the command lines that ``run_all`` starts, with process creation replaced by a stub."""
    launched: list[list[str]] = []

    class ExitedProcess:
        """A child that has already exited, so ``run_all`` stops at once."""

        pid = 0
        returncode = 0

        def __init__(self, args, **kwargs):
            launched.append(list(args))

        def poll(self):
            return 0

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(run.subprocess, "Popen", ExitedProcess)
    monkeypatch.setattr(run.signal, "signal", lambda signal_number, handler: None)
    monkeypatch.setattr(run.time, "sleep", lambda seconds: None)
    # A unix:// Redis URL makes run_all leave Redis alone.
    run.run_all(Settings(redis_url="unix:///nonexistent/redis.sock"))
    capsys.readouterr()
    return launched


def test_dockerfile_targets_exist():
    names = [stage.name for stage in dockerfile().stages]
    for target in TARGETS:
        assert target in names


def test_dockerfile_default_target_is_backend():
    assert dockerfile().stages[-1].name == "backend"


@pytest.mark.parametrize("target", TARGETS)
def test_final_stage_not_built_on_build_stage(target):
    # The final images start from the base image again and only copy the virtual environment,
    # so nothing of the build stages (pip cache, sources, any compiler) is in them.
    chain_names = [stage.name for stage in dockerfile().chain(target)]
    build_stages = {"source"} | {stage.name for stage in dockerfile().stages if stage.name.startswith("build-")}
    assert not set(chain_names) & build_stages, chain_names


@pytest.mark.parametrize("target", TARGETS)
def test_final_stage_installs_no_build_tools(target):
    for stage in dockerfile().chain(target):
        for instruction in stage.all("RUN"):
            command = run_without_flags(instruction)
            assert "pip install" not in command, f"stage {stage.name} installs Python packages: {command!r}"
            for match in PACKAGE_INSTALL.finditer(command):
                packages = set(re.findall(r"[\w.+-]+", match.group("rest")))
                assert not packages & BUILD_TOOLS, f"stage {stage.name} installs {packages & BUILD_TOOLS}"
                assert not [p for p in packages if p.endswith("-dev")], f"stage {stage.name}: {command!r}"


@pytest.mark.parametrize("target", TARGETS)
def test_final_stage_copies_its_venv(target):
    copies = [i.arguments for stage in dockerfile().chain(target) for i in stage.all("COPY") if "--from=" in i.arguments]
    assert copies == [f"--from=build-{target} /opt/venv /opt/venv"]
    assert "/opt/venv/bin" in effective_env(dockerfile(), target)["PATH"].split(":")


@pytest.mark.parametrize("target", TARGETS)
def test_final_stage_user_not_root(target):
    user = last_instruction(dockerfile(), target, "USER")
    assert user is not None, f"stage {target} runs as root: it has no USER"
    name = user.arguments.split(":")[0]
    assert name not in ("root", "0")
    creates_user = [
        i for stage in dockerfile().chain(target) for i in stage.all("RUN")
        if re.search(rf"\buseradd\b.*\b{re.escape(name)}\s*(&&|$)", run_without_flags(i))
    ]
    assert creates_user, f"no RUN useradd creates the user {name!r} in the chain of {target}"


def test_base_image_python_matches_requires_python():
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    for target in (*TARGETS, "build-backend", "build-worker", "build-worker-gpu"):
        image = dockerfile().base_image(target)
        match = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?-slim(?:-\w+)?", image)
        assert match, f"{target} starts from {image!r}, not an official slim Python image"
        assert requires.contains(match.group(1) + ".0"), f"{image} does not satisfy requires-python {requires}"


def test_dockerfile_commands_match_run(launched_commands):
    prefix = [sys.executable, "-m", "thumbnail_ml"]
    for command in launched_commands:
        assert command[: len(prefix)] == prefix
    run_subcommands = sorted(command[len(prefix):][0] for command in launched_commands)
    assert run_subcommands == ["serve", "worker"]

    script = "thumbnail-ml"
    assert pyproject()["project"]["scripts"][script] == "thumbnail_ml.cli:main"
    expected = {"backend": [script, "serve"], "worker": [script, "worker"], "worker-gpu": [script, "worker"]}
    for target, command in expected.items():
        cmd = last_instruction(dockerfile(), target, "CMD")
        assert cmd is not None, f"stage {target} has no CMD"
        assert exec_form(cmd.arguments) == command
    image_subcommands = sorted({command[1] for command in expected.values()})
    assert image_subcommands == run_subcommands


def test_backend_listens_on_default_port():
    environment = effective_env(dockerfile(), "backend")
    default_port = Settings.from_env({}).port
    assert environment["HOST"] == "0.0.0.0"
    assert environment["PORT"] == str(default_port)
    exposed = [word for i in dockerfile().stage("backend").all("EXPOSE") for word in i.arguments.split()]
    assert exposed == [str(default_port)]


@pytest.mark.parametrize("target", TARGETS)
def test_dockerfile_env_names_are_read(target):
    environment = effective_env(dockerfile(), target)
    names = {name for name in environment if not name.startswith(NON_SETTING_ENV_PREFIXES)}
    assert names <= setting_names(), f"not read by Settings.from_env: {sorted(names - setting_names())}"
    assert environment["MODEL_DIR"] == "/data/models"


def test_build_stages_use_lock():
    commands = {name: run_without_flags(dockerfile().stage(name).all("RUN")[-1])
                for name in ("build-backend", "build-worker", "build-worker-gpu")}
    for name, command in commands.items():
        assert "-c requirements.lock" in command, f"{name} does not use the lock: {command!r}"
    assert command_packages(commands["build-backend"]) == ["."]
    assert command_packages(commands["build-worker"]) == [".[train]"]
    assert command_packages(commands["build-worker-gpu"])[0] == "."


def command_packages(command: str) -> list[str]:
    """Return the requirements that the ``pip install`` of a shell command installs."""
    words = shlex.split(command)
    starts = [i for i in range(len(words) - 1) if words[i].endswith("/pip") and words[i + 1] == "install"]
    assert len(starts) == 1, f"expected one pip install in {command!r}"
    packages = []
    skip_next = False
    for word in words[starts[0] + 2:]:
        if word == "&&":
            break
        if skip_next:
            skip_next = False
        elif word in ("-c", "--constraint", "-r", "--requirement"):
            skip_next = True
        elif not word.startswith("-"):
            packages.append(word)
    return packages


def test_gpu_worker_pins_match_train_extra():
    train = {Requirement(line).name: Requirement(line) for line in pyproject()["project"]["optional-dependencies"]["train"]}
    command = run_without_flags(dockerfile().stage("build-worker-gpu").all("RUN")[-1])
    gpu = {Requirement(word).name: Requirement(word) for word in command_packages(command)[1:]}
    assert set(gpu) == {"tensorflow", "keras"}
    assert gpu["tensorflow"].extras == {"and-cuda"}
    assert gpu["tensorflow"].specifier == train["tensorflow-cpu"].specifier
    assert gpu["keras"].specifier == train["keras"].specifier


# -- the backend image's healthcheck against a real server -----------------------------------


@dataclass
class RunningServer:
    """A ``thumbnail-ml serve`` process that this module started, and its port."""

    process: subprocess.Popen
    port: int
    log_path: Path


def wait_for_port(server: RunningServer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"server exited with {server.process.returncode}:\n{server.log_path.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"server did not listen on port {server.port} within {timeout} s")


def clean_environ() -> dict[str, str]:
    """Return this process's environment without any variable that the settings read."""
    return {name: value for name, value in os.environ.items() if name not in setting_names()}


@pytest.fixture(scope="module")
def server_with_basic_auth(tmp_path_factory):
    directory = tmp_path_factory.mktemp("healthcheck-server")
    port = free_port()
    environment = {
        **clean_environ(),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MODEL_DIR": str(directory / "models"),
        "IMAGE_CACHE_DIR": str(directory / "image-cache"),
        # Nothing listens there, so /health reports the queue as unreachable without waiting.
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "BASIC_AUTH_USER": "monitor",
        "BASIC_AUTH_PASS": "health-secret",
    }
    log_path = directory / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "thumbnail_ml", "serve"], cwd=REPO_ROOT, env=environment,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = RunningServer(process, port, log_path)
    try:
        wait_for_port(server)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def run_healthcheck(tmp_path: Path, port: int, user: str | None, password: str | None) -> subprocess.CompletedProcess:
    """Run the backend image's HEALTHCHECK command, with its script taken from the Dockerfile."""
    command = healthcheck_command(dockerfile(), "backend")
    scripts = heredoc_files(dockerfile(), "backend")
    assert command[0] == "python"
    assert command[1] in scripts, f"{command} does not run a script the image contains"
    script = tmp_path / "healthcheck.py"
    script.write_text(scripts[command[1]], encoding="utf-8")
    environment = {**clean_environ(), "PORT": str(port)}
    if user is not None:
        environment["BASIC_AUTH_USER"] = user
        environment["BASIC_AUTH_PASS"] = password or ""
    return subprocess.run([sys.executable, str(script), *command[2:]], env=environment,
                          capture_output=True, text=True, timeout=30)


def test_healthcheck_passes_with_credentials(server_with_basic_auth, tmp_path):
    result = run_healthcheck(tmp_path, server_with_basic_auth.port, "monitor", "health-secret")
    assert result.returncode == 0, result.stderr


def test_healthcheck_fails_with_wrong_password(server_with_basic_auth, tmp_path):
    result = run_healthcheck(tmp_path, server_with_basic_auth.port, "monitor", "wrong")
    assert result.returncode == 1
    assert "401" in result.stderr


def test_healthcheck_fails_without_credentials(server_with_basic_auth, tmp_path):
    result = run_healthcheck(tmp_path, server_with_basic_auth.port, None, None)
    assert result.returncode == 1


def test_healthcheck_fails_when_nothing_listens(tmp_path):
    result = run_healthcheck(tmp_path, free_port(), None, None)
    assert result.returncode == 1
    assert "failed" in result.stderr


# -- .dockerignore ----------------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Return whether ``path`` or a folder above it matches a pattern (no ``!`` exceptions)."""
    assert not [p for p in patterns if p.startswith("!")], "exceptions are not handled by this check"
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch(prefix, pattern) or (pattern.startswith("**/") and fnmatch(prefix.split("/")[-1], bare)):
                return True
    return False


def test_dockerignore_excludes_local_state():
    patterns = dockerignore_patterns()
    for path in (".venv", ".git", ".cache", "data/models", "bench/results/latency.json", "tests/test_deploy.py",
                 "backend/__pycache__/app.cpython-311.pyc", "thumbnail_ml.egg-info/PKG-INFO"):
        assert ignored(path, patterns), f"{path} is sent to the Docker build"


def test_dockerignore_keeps_copied_sources():
    patterns = dockerignore_patterns()
    sources = []
    for instruction in dockerfile().stage("source").all("COPY"):
        sources.extend(instruction.arguments.split()[:-1])
    assert sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"COPY source {source} is not in the repository"
        assert not ignored(source, patterns), f"COPY source {source} is excluded by .dockerignore"
        for path in (REPO_ROOT / source).rglob("*.py") if (REPO_ROOT / source).is_dir() else []:
            relative = path.relative_to(REPO_ROOT).as_posix()
            assert not ignored(relative, patterns), f"{relative} is excluded by .dockerignore"


# -- docker-compose.yml -----------------------------------------------------------------------


INTERPOLATION = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<bare>\w+)|(?P<escape>\$))")


def interpolate(value, environ: Mapping[str, str]):
    """Substitute ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}`` and ``$$`` as Compose does."""
    if isinstance(value, dict):
        return {key: interpolate(item, environ) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environ) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group("escape"):
            return "$"
        expression = match.group("braced") or match.group("bare")
        name, operator, default = re.match(r"(\w+)(:-|-)?(.*)", expression).groups()
        if operator == ":-":
            return environ.get(name) or default
        if operator == "-":
            return environ.get(name, default)
        assert not default, f"unsupported interpolation ${{{expression}}}"
        return environ.get(name, "")

    return INTERPOLATION.sub(substitute, value)


@lru_cache(maxsize=1)
def compose_raw() -> dict:
    with open(COMPOSE_FILE, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@lru_cache(maxsize=1)
def compose() -> dict:
    """Return the compose file with variables resolved as on a host where none is set."""
    return interpolate(compose_raw(), {})


def service(name: str) -> dict:
    return compose()["services"][name]


def environment(name: str) -> dict[str, str]:
    """Return a service's environment as strings (the list form ``K=V`` is accepted too)."""
    raw = service(name).get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: "" if value is None else str(value) for key, value in raw.items()}


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


def mounts(name: str) -> list[Mount]:
    """Return a service's volumes, from short (``src:dst[:ro]``) or long syntax."""
    result = []
    for item in service(name).get("volumes") or []:
        if isinstance(item, dict):
            result.append(Mount(item.get("source", ""), item["target"], bool(item.get("read_only"))))
        else:
            parts = item.split(":")
            mode = parts[2] if len(parts) > 2 else "rw"
            result.append(Mount(parts[0], parts[1], "ro" in mode.split(",")))
    return result


def mount_at(name: str, target: str) -> Mount:
    found = [mount for mount in mounts(name) if mount.target == target]
    assert len(found) == 1, f"{name} mounts {len(found)} volumes at {target}: {mounts(name)}"
    return found[0]


def container_ports(name: str) -> list[int]:
    ports = []
    for item in service(name).get("ports") or []:
        if isinstance(item, dict):
            ports.append(int(item["target"]))
        else:
            ports.append(int(str(item).split(":")[-1].split("/")[0]))
    return ports


def app_settings(name: str) -> Settings:
    """Build the settings that a service's container would start with."""
    image_environment = effective_env(dockerfile(), SERVICE_TARGETS[name])
    return Settings.from_env({**image_environment, **environment(name)})


def test_compose_services():
    services = compose()["services"]
    for name in ("label-studio", "redis", "backend", "worker", "worker-gpu"):
        assert name in services
    assert service("worker-gpu")["profiles"] == ["gpu"]
    for name in ("label-studio", "redis", "backend", "worker"):
        assert "profiles" not in service(name), f"{name} must start without a profile"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_builds_matching_target(name):
    build = service(name)["build"]
    assert build["context"] == "."
    assert build["target"] == SERVICE_TARGETS[name]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_environment_names_are_read(name):
    names = set(environment(name))
    assert names <= setting_names(), f"{name} sets variables the code does not read: {sorted(names - setting_names())}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_environment_is_valid(name):
    settings = app_settings(name)
    services = compose()["services"]

    label_studio = urlsplit(settings.label_studio_url or "")
    assert label_studio.hostname == "label-studio"
    assert label_studio.hostname in services
    assert label_studio.port in container_ports("label-studio")

    redis = urlsplit(settings.redis_url)
    assert redis.scheme == "redis"
    assert redis.hostname in services
    assert services[redis.hostname]["image"].startswith("redis:")


def test_api_key_comes_from_host():
    for name in APP_SERVICES:
        assert compose_raw()["services"][name]["environment"]["LABEL_STUDIO_API_KEY"] == "${LABEL_STUDIO_API_KEY:-}"
    with_key = interpolate(compose_raw(), {"LABEL_STUDIO_API_KEY": "token-from-host"})
    assert with_key["services"]["worker"]["environment"]["LABEL_STUDIO_API_KEY"] == "token-from-host"


def test_model_volume_shared():
    model_dirs = {name: str(app_settings(name).model_dir) for name in APP_SERVICES}
    assert len(set(model_dirs.values())) == 1, model_dirs
    sources = {name: mount_at(name, model_dirs[name]) for name in APP_SERVICES}
    for name, mount in sources.items():
        assert mount.source in compose()["volumes"], f"{name}: {mount.source} is not a named volume"
        assert not mount.read_only, f"{name} must write to the model store"
    assert len({mount.source for mount in sources.values()}) == 1, sources


def test_backend_port_is_code_default():
    default_port = Settings.from_env({}).port
    assert app_settings("backend").port == default_port
    assert container_ports("backend") == [default_port]
    assert app_settings("backend").host == "0.0.0.0"


@pytest.mark.parametrize("name", ("worker", "worker-gpu"))
def test_worker_can_scale(name):
    assert "container_name" not in service(name)
    assert "ports" not in service(name)


def test_label_studio_service():
    label_studio = service("label-studio")
    flags = environment("label-studio")
    assert label_studio["image"] == LABEL_STUDIO_IMAGE
    assert flags["ML_BLOCK_LOCAL_IP"].lower() == "false"
    assert flags["SSRF_PROTECTION_ENABLED"].lower() == "false"
    assert flags["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"].lower() == "true"
    assert 8080 in container_ports("label-studio")


def test_images_are_pinned():
    for name, definition in compose()["services"].items():
        if "image" in definition:
            image, _, tag = definition["image"].rpartition(":")
            assert image, f"{name}: {definition['image']} has no tag"
            assert re.fullmatch(r"\d+\.\d+\.\d+(-\w+)?", tag), f"{name}: {definition['image']} is not pinned to a version"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_local_files_shared_with_label_studio(name):
    label_studio = environment("label-studio")
    settings = app_settings(name)

    document_root = label_studio["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]
    assert str(settings.document_root) == document_root
    files_mounts = [mount for mount in mounts("label-studio") if mount.target.startswith(document_root + "/")]
    assert files_mounts, "Label Studio mounts nothing under its local-files document root"
    for mount in files_mounts:
        assert mount.read_only
        assert mount_at(name, mount.target) == mount

    data_dir = label_studio["LABEL_STUDIO_BASE_DATA_DIR"]
    assert str(settings.label_studio_data_dir) == data_dir
    label_studio_data = mount_at("label-studio", data_dir)
    assert not label_studio_data.read_only
    assert mount_at(name, data_dir) == Mount(label_studio_data.source, data_dir, read_only=True)


def test_depends_on_healthy_services():
    for name, definition in compose()["services"].items():
        for dependency, condition in (definition.get("depends_on") or {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}: {condition}"
            dependency_definition = service(dependency)
            if "build" in dependency_definition:
                healthcheck_command(dockerfile(), dependency_definition["build"]["target"])
            else:
                assert dependency_definition["healthcheck"]["test"], f"{dependency} has no healthcheck"
    for name in APP_SERVICES:
        assert set(service(name)["depends_on"]) == {"redis", "label-studio"}


def test_services_have_healthchecks():
    for name in ("label-studio", "redis"):
        test = service(name)["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL")
    assert "disable" not in service("backend").get("healthcheck", {})
    command = healthcheck_command(dockerfile(), "backend")
    script = heredoc_files(dockerfile(), "backend")[command[1]]
    assert "/health" in script


def test_gpu_worker_reserves_nvidia_gpu():
    devices = service("worker-gpu")["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]


# -- the backend image's Python environment, built without Docker ----------------------------


@pytest.fixture
def venv_path(tmp_path):
    """A path for a virtual environment, removed afterwards because it takes about 670 MB of disk."""
    path = tmp_path / "venv"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_backend_venv_has_no_tensorflow(tmp_path, venv_path):
    # The build-backend stage's RUN command, run on a copy of exactly what the Dockerfile
    # copies. pip resolves against the lock for real, and may use its cache.
    context = tmp_path / "context"
    context.mkdir()
    for instruction in dockerfile().stage("source").all("COPY"):
        for source in instruction.arguments.split()[:-1]:
            path = REPO_ROOT / source
            if path.is_dir():
                shutil.copytree(path, context / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(path, context / source)

    venv = venv_path
    command = run_without_flags(dockerfile().stage("build-backend").all("RUN")[-1])
    build_environ = {
        **clean_environ(),
        **effective_env(dockerfile(), "source"),
        "VENV": str(venv),
        # In the image, `python` is the base image's Python 3.11. Here it is this interpreter.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    build_environ.pop("PYTHONPATH", None)
    started = time.monotonic()
    build = subprocess.run(["bash", "-c", command], cwd=context, env=build_environ,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-4000:]
    print(f"backend venv built in {time.monotonic() - started:.0f} s")

    # Run from an empty folder, so the imports come from the venv and not from a source tree.
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    run_environ = {**clean_environ()}
    run_environ.pop("PYTHONPATH", None)
    python = str(venv / "bin" / "python")

    listing = subprocess.run(
        [python, "-c", "import importlib.metadata as m, json; print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"],
        cwd=workdir, env=run_environ, capture_output=True, text=True, timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    installed = {re.sub(r"[-_.]+", "-", name).lower() for name in json.loads(listing.stdout)}
    assert "thumbnail-ml" in installed
    for package in ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "keras", "tf-keras"):
        assert package not in installed

    find_spec = subprocess.run(
        [python, "-c", "import importlib.util; print(importlib.util.find_spec('tensorflow'), importlib.util.find_spec('keras'))"],
        cwd=workdir, env=run_environ, capture_output=True, text=True, timeout=60,
    )
    assert find_spec.stdout.split() == ["None", "None"]

    imports = subprocess.run([python, "-c", "import backend.app, model.runtime"], cwd=workdir, env=run_environ,
                             capture_output=True, text=True, timeout=120)
    assert imports.returncode == 0, imports.stderr[-3000:]

    help_output = subprocess.run([str(venv / "bin" / "thumbnail-ml"), "--help"], cwd=workdir, env=run_environ,
                                 capture_output=True, text=True, timeout=60)
    assert help_output.returncode == 0, help_output.stderr[-3000:]
    assert "serve" in help_output.stdout
    assert "worker" in help_output.stdout
