"""Every command in README.md, and the test that runs it.

README.md is the user's guide, so its commands must keep working. The commands are the lines
of its ``sh`` blocks and the inline code that starts with a program (``make``,
``thumbnail-ml``, ``docker compose``...). ``COMMAND_TESTS`` maps each of them to the tests that
run it: tests in this file, which run commands the way a user does where no other test runs
them, or existing tests elsewhere. A README command that no pattern matches fails
``test_every_readme_command_is_mapped``, so a new command needs a test before it is documented.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
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
from pathlib import Path

import pytest
import requests
from packaging.requirements import Requirement
from redis import Redis

from model.store import DEFAULT_LINEAGE, ModelStore
from tests.servers import free_port, process_table
from tests.support import REPO_ROOT, THUMBNAIL_IMAGES, write_json_min_export
from thumbnail_ml.cli import build_parser
from training.queue import enqueue_training

README = REPO_ROOT / "README.md"
CI_SCRIPT = REPO_ROOT / ".ci" / "run"
PYPROJECT = REPO_ROOT / "pyproject.toml"
STAMP = REPO_ROOT / ".venv" / ".installed-stamp"
# The console script of the environment running the tests: .venv/bin/thumbnail-ml under `make test`.
THUMBNAIL_ML = Path(sys.executable).parent / "thumbnail-ml"
REDIS_URL = "redis://127.0.0.1:6379/11"

# Inline code is a command when it starts with one of these.
COMMAND_PREFIXES = ("make ", "thumbnail-ml ", ".venv/bin/thumbnail-ml ", ".venv/bin/pip ", "docker compose ",
                    "apt-get ", "brew ")
# Variables that would change what `make` does here: those of a `make test` running this file,
# and the Makefile's own parameters.
MAKE_VARIABLES = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "IMAGES", "EXPORT", "PYTEST_ARGS", "VENV")

HERE = "tests/test_readme.py::"
DEPLOY = "tests/test_deploy.py::"
PREANNOTATE_E2E = "tests/e2e/test_preannotate_e2e.py::test_uncertainty_order_matches_data_manager"
PARSE_CHECK = HERE + "test_readme_commands_parse"
MAKE_RUN = HERE + "test_make_run_serves_until_interrupted"

# README command pattern -> the pytest node ids of the tests that run it. A pattern matches a
# command whose words start with the pattern's words, and the longest matching pattern wins.
# The e2e tests run the commands that need a Label Studio. PARSE_CHECK also parses every
# `thumbnail-ml` command of README.md, options included, with the real argument parser.
COMMAND_TESTS: dict[str, tuple[str, ...]] = {
    "make run": (MAKE_RUN,),
    "make run IMAGES=DIR": (HERE + "test_make_run_images_predicts_folder",),
    # .ci/run is the CI job and runs exactly `make test`. `make -n` checks the PYTEST_ARGS form.
    "make test": (HERE + "test_ci_runs_make_test", HERE + "test_make_test_passes_pytest_args"),
    # The e2e test runs `thumbnail-ml demo --images DIR`, the command that `make demo IMAGES=DIR`
    # runs (checked here with `make -n`). No test starts the demo with --export.
    "make demo": ("tests/e2e/test_demo_e2e.py::test_demo_starts_connects_and_stops",
                  HERE + "test_make_demo_runs_demo_command", HERE + "test_make_without_arguments_prints_usage"),
    # The benchmarks take tens of minutes: the test checks that every script exists and starts.
    "make bench": (HERE + "test_make_bench_scripts_start",),
    # The session fixture `trained_model` (tests/conftest.py) runs `thumbnail-ml train --export
    # FILE --images DIR` on the labelled thumbnails, and this test checks its result.
    "thumbnail-ml train": ("tests/test_training.py::test_trained_version_beats_prior",),
    "thumbnail-ml evaluate": ("tests/test_training.py::test_cli_evaluate_matches_manifest",
                              HERE + "test_evaluate_with_and_without_options"),
    "thumbnail-ml predict": ("tests/test_training.py::test_cli_predict_folder_with_a_bad_file",
                             HERE + "test_predict_folder_and_file"),
    "thumbnail-ml preannotate": (PREANNOTATE_E2E, "tests/test_preannotate.py::test_command_enqueue_prints_job_id",
                                 PARSE_CHECK),
    "thumbnail-ml next": (PREANNOTATE_E2E, PARSE_CHECK),
    "thumbnail-ml export": ("tests/e2e/test_export_e2e.py::test_export_reads_back_labels", PARSE_CHECK),
    "thumbnail-ml report": ("tests/test_report.py::test_report_cli_html_on_trained_model",
                            HERE + "test_report_with_and_without_options"),
    # tests/test_store.py runs these on a store of placeholder files, this file on a trained model.
    "thumbnail-ml models list": ("tests/test_store.py::test_models_cli_list_show_rollback",
                                 HERE + "test_models_commands_on_trained_store"),
    "thumbnail-ml models show": ("tests/test_store.py::test_models_cli_list_show_rollback",
                                 HERE + "test_models_commands_on_trained_store"),
    "thumbnail-ml models rollback": ("tests/test_store.py::test_models_cli_list_show_rollback",
                                     HERE + "test_models_commands_on_trained_store"),
    "thumbnail-ml label-config": ("tests/test_label_config.py::test_cli_prints_default_config",),
    "thumbnail-ml jobs": (HERE + "test_jobs_lists_queued_job",),
    "thumbnail-ml serve": (DEPLOY + "test_healthcheck_passes_with_credentials", MAKE_RUN),
    "thumbnail-ml worker": ("tests/test_faults.py::test_two_workers_train_one_at_a_time", MAKE_RUN),
    "thumbnail-ml COMMAND --help": (HERE + "test_command_help",),
    # The e2e test runs `thumbnail-ml demo --images DIR --port P --backend-port Q` with its own ports.
    "thumbnail-ml demo": ("tests/e2e/test_demo_e2e.py::test_demo_starts_connects_and_stops", PARSE_CHECK),
    # `make run` runs `thumbnail-ml run`; the test signals it through make's process group.
    "thumbnail-ml run": (MAKE_RUN,),
    # No Docker engine runs here (only the client is installed): tests/test_deploy.py parses
    # docker-compose.yml and the Dockerfile and checks what each command relies on.
    "docker compose up -d --build": (DEPLOY + "test_compose_builds_matching_target",
                                     DEPLOY + "test_dockerfile_targets_exist"),
    "docker compose up -d": (DEPLOY + "test_compose_services", DEPLOY + "test_depends_on_healthy_services"),
    "docker compose up -d --scale worker=3": (DEPLOY + "test_worker_can_scale",),
    "docker compose --profile gpu up -d": (DEPLOY + "test_compose_services",
                                           DEPLOY + "test_gpu_worker_reserves_nvidia_gpu"),
    "docker compose exec backend thumbnail-ml models list": (DEPLOY + "test_model_volume_shared",
                                                             DEPLOY + "test_final_stage_copies_its_venv",
                                                             PARSE_CHECK),
    # Compose reads .env to fill ${LABEL_STUDIO_API_KEY} in docker-compose.yml.
    "echo LABEL_STUDIO_API_KEY=your-token": (DEPLOY + "test_api_key_comes_from_host",),
    # The CUDA build of TensorFlow cannot be installed here: the tests check its pin instead.
    ".venv/bin/pip install": (HERE + "test_gpu_install_pins_tensorflow",
                              DEPLOY + "test_gpu_worker_pins_match_train_extra"),
}

# Install instructions for other systems: package managers of other distributions, which no
# test runs. Each entry must match a README command exactly.
OTHER_SYSTEM_INSTALLS = frozenset({
    "apt-get install redis-server",  # Debian and Ubuntu
    "brew install redis",  # macOS
})


# -- reading README.md ----------------------------------------------------------------------


FENCED_BLOCK = re.compile(r"^```(?P<language>\w*)\n(?P<body>.*?)^```", re.S | re.M)
INLINE_CODE = re.compile(r"`([^`]+)`")
OPTIONAL_PART = re.compile(r"\[(--[^\]]*)\]")


def readme_commands() -> list[str]:
    """Return the commands of README.md in order, without duplicates.

    ``.venv/bin/thumbnail-ml`` is written ``thumbnail-ml``, and inline code that wraps across
    lines is joined with single spaces.
    """
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in FENCED_BLOCK.finditer(text):
        if block.group("language") != "sh":
            continue
        for line in block.group("body").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                commands.append(line)
    for span in INLINE_CODE.finditer(FENCED_BLOCK.sub("", text)):
        code = " ".join(span.group(1).split())
        if code.startswith(COMMAND_PREFIXES):
            commands.append(code)
    normalised = [re.sub(r"^\.venv/bin/thumbnail-ml ", "thumbnail-ml ", command) for command in commands]
    return list(dict.fromkeys(normalised))


def readme_command(prefix: str) -> str:
    """Return the one README command that starts with ``prefix``."""
    found = [command for command in readme_commands() if command.startswith(prefix)]
    assert len(found) == 1, f"expected one README command starting with {prefix!r}, found {found}"
    return found[0]


def matching_pattern(command: str) -> str | None:
    """Return the longest pattern of COMMAND_TESTS whose words start the command's words."""
    words = shlex.split(command)
    pattern_words = {pattern: shlex.split(pattern) for pattern in COMMAND_TESTS}
    matches = [pattern for pattern, prefix in pattern_words.items() if words[: len(prefix)] == prefix]
    return max(matches, key=lambda pattern: len(pattern_words[pattern]), default=None)


def command_words(command: str, with_options: bool, values: dict[str, str]) -> list[str]:
    """Split a README command, keeping or dropping its ``[--option ...]`` parts.

    Each word that is a key of ``values`` (a placeholder such as FILE or V) is replaced by its value.
    """
    if with_options:
        command = OPTIONAL_PART.sub(r"\1", command)
    else:
        command = OPTIONAL_PART.sub("", command)
    return [values.get(word, word) for word in shlex.split(command)]


def readme_subcommands() -> list[str]:
    """Return the subcommands named in the first column of the README's command table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## The command line", 1)[1].split("\n## ", 1)[0]
    names = []
    for line in section.splitlines():
        if line.startswith("| `"):
            names.extend(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def cli_subcommands() -> list[str]:
    """Return the leaf subcommands of the ``thumbnail-ml`` parser, such as ``models list``."""
    names = []
    pending = [("", build_parser())]
    while pending:
        prefix, parser = pending.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, subparser in action.choices.items():
                    if any(isinstance(sub, argparse._SubParsersAction) for sub in subparser._actions):
                        pending.append((f"{prefix}{name} ", subparser))
                    else:
                        names.append(f"{prefix}{name}")
    return sorted(names)


def strict_parser() -> argparse.ArgumentParser:
    """Return the ``thumbnail-ml`` parser with abbreviated options turned off.

    argparse accepts any unambiguous prefix of an option, which would let a misspelt README
    option such as ``--only-unlab`` pass.
    """
    parser = build_parser()
    pending = [parser]
    while pending:
        current = pending.pop()
        current.allow_abbrev = False
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
    return parser


def parse_cli(words: list[str]) -> argparse.Namespace:
    """Parse ``thumbnail-ml`` arguments without running the command, or fail the test with argparse's message."""
    error = io.StringIO()
    try:
        with contextlib.redirect_stderr(error):
            return strict_parser().parse_args(words)
    except SystemExit:
        pytest.fail(f"thumbnail-ml {shlex.join(words)} is rejected: {error.getvalue().strip()}")


def defined_tests(path: Path) -> set[str]:
    """Return the test functions of a file as ``name`` and ``Class::name``, read with ast."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(f"{node.name}::{item.name}" for item in node.body
                         if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return {name for name in names if name.split("::")[-1].startswith("test")}


# -- the mapping ----------------------------------------------------------------------------


def test_readme_has_commands():
    commands = readme_commands()
    assert "make run" in commands
    assert "make test" in commands
    assert len(commands) > 20, commands


def test_every_readme_command_is_mapped():
    unmapped = [command for command in readme_commands()
                if command not in OTHER_SYSTEM_INSTALLS and matching_pattern(command) is None]
    assert unmapped == [], ("README.md commands without a test: add a pattern and its tests to COMMAND_TESTS "
                            f"in tests/test_readme.py: {unmapped}")


def test_every_pattern_matches_a_readme_command():
    used = {matching_pattern(command) for command in readme_commands()}
    stale = sorted(set(COMMAND_TESTS) - used)
    assert stale == [], f"COMMAND_TESTS patterns that match no README.md command: {stale}"


def test_other_system_installs_are_in_readme():
    missing = sorted(OTHER_SYSTEM_INSTALLS - set(readme_commands()))
    assert missing == [], f"OTHER_SYSTEM_INSTALLS entries not in README.md: {missing}"


@pytest.mark.parametrize("node_id", sorted({node for nodes in COMMAND_TESTS.values() for node in nodes}))
def test_mapped_test_exists(node_id):
    path, _, name = node_id.partition("::")
    assert (REPO_ROOT / path).is_file(), f"{node_id}: {path} not found"
    name = name.split("[", 1)[0]
    assert name in defined_tests(REPO_ROOT / path), f"{node_id}: no test {name} in {path}"


def test_command_table_lists_every_subcommand():
    assert sorted(readme_subcommands()) == cli_subcommands()


# Values for the placeholders of README commands that are parsed but not run here.
PARSE_VALUES = {"ID": "3", "N": "3", "K": "5"}


def test_readme_commands_parse():
    """Parse every ``thumbnail-ml`` command of README.md, with and without its options, with the real parser."""
    checked = 0
    for command in readme_commands():
        words = shlex.split(command)
        if "thumbnail-ml" not in words or "--help" in words:
            continue
        command = command.split("thumbnail-ml ", 1)[1]
        # Prose names a command, such as `thumbnail-ml preannotate`, without its required options.
        if command in cli_subcommands() or command in {name.split()[0] for name in cli_subcommands()}:
            continue
        for with_options in (False, True):
            arguments = command_words(command, with_options, PARSE_VALUES)
            # `--format json|json-min|csv` lists the choices: each one is parsed.
            for index, word in enumerate(arguments):
                if "|" in word:
                    for choice in word.split("|"):
                        parse_cli(arguments[:index] + [choice] + arguments[index + 1:])
                    break
            else:
                parse_cli(arguments)
            checked += 1
    assert checked > 5


# -- make -----------------------------------------------------------------------------------


def make_environment(**values: str) -> dict[str, str]:
    """Return this process's environment without make's and Label Studio's variables, plus ``values``."""
    environ = {key: value for key, value in os.environ.items()
               if key not in MAKE_VARIABLES and not key.startswith("LABEL_STUDIO_")}
    return {**environ, **values}


def run_make(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["make", *args], cwd=REPO_ROOT, env=env or make_environment(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def installed():
    """Fail unless `make` finds the environment installed, so that no test here installs it."""
    if not STAMP.is_file():
        pytest.fail(f"{STAMP} is missing: the environment is not installed. Run `make install` (or `make test`, "
                    "which installs it first); this test does not install it")
    question = run_make("-q", str(STAMP.relative_to(REPO_ROOT)))
    if question.returncode != 0:
        pytest.fail(f"{STAMP} is older than pyproject.toml or requirements.lock, so `make` would reinstall the "
                    "environment. Run `make install` first; this test does not install it")


@pytest.fixture
def readme_redis():
    """Redis database 11, emptied before and after the test."""
    connection = Redis.from_url(REDIS_URL)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


def descendants(root: int) -> dict[int, str]:
    """Return pid -> command line of every running process below ``root``."""
    table = process_table()
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, command) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = command
                frontier.append(pid)
    return found


def still_running(processes: dict[int, str]) -> dict[int, str]:
    """Return the processes of ``processes`` that still run the same command."""
    table = process_table()
    return {pid: command for pid, command in processes.items() if pid in table and table[pid][2] == command}


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def wait_for_health(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"make run exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            response = requests.get(url, timeout=1)
            if response.ok:
                return response.json()
        except requests.RequestException:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {timeout:.0f} s:\n{log_path.read_text(errors='replace')[-3000:]}")


def test_make_run_serves_until_interrupted(installed, readme_redis, tmp_path):
    assert "make run" in readme_commands()
    port = free_port()
    env = make_environment(MODEL_DIR=str(tmp_path / "models"), IMAGE_CACHE_DIR=str(tmp_path / "cache"),
                           PORT=str(port), REDIS_URL=REDIS_URL, LOG_LEVEL="INFO")
    log_path = tmp_path / "make-run.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["make", "run"], cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    started: dict[int, str] = {}
    try:
        health = wait_for_health(f"http://127.0.0.1:{port}/health", process, log_path)
        assert health["model_trained"] is False
        deadline = time.monotonic() + 30
        while "listening on queues" not in log_path.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.2)
        output = log_path.read_text(errors="replace")
        assert "listening on queues" in output, output[-3000:]
        assert "Settings > Model > Connect Model" in output
        assert f"http://localhost:{port}" in output
        started = descendants(process.pid)
        commands = " | ".join(started.values())
        assert "thumbnail_ml serve" in commands
        assert "thumbnail_ml worker" in commands

        # Ctrl-C in a terminal sends SIGINT to the foreground process group.
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
        deadline = time.monotonic() + 30
        while (still_running(started) or not port_is_free(port)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert still_running(started) == {}
        assert port_is_free(port)
        output = log_path.read_text(errors="replace")
        assert "stopped worker" in output
        assert "stopped backend" in output
        assert "stopping the others" not in output, output[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        for pid in still_running(started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def copy_thumbnails(folder: Path, count: int) -> list[Path]:
    """Copy ``count`` real labelled thumbnails into ``folder``."""
    folder.mkdir(parents=True)
    sources = sorted(THUMBNAIL_IMAGES.rglob("*.jpg"))[:count]
    assert len(sources) == count
    return [Path(shutil.copy(path, folder / path.name)) for path in sources]


def check_predictions(stdout: str, images: list[Path], version: str) -> None:
    records = [json.loads(line) for line in stdout.splitlines()]
    assert sorted(record["image"] for record in records) == sorted(str(path) for path in images)
    classes = None
    for record in records:
        assert record["model_version"] == version
        assert record["choices"], record
        classes = classes or list(record["probabilities"])
        assert set(record["choices"]) <= set(classes)
        assert 0.0 <= record["score"] <= 1.0


def test_make_run_images_predicts_folder(installed, trained_model, tmp_path):
    folder = tmp_path / "thumbnails"
    images = copy_thumbnails(folder, 4)
    command = command_words(readme_command("make run IMAGES="), True, {"IMAGES=DIR": f"IMAGES={folder}"})
    result = run_make(*command[1:], env=make_environment(MODEL_DIR=str(trained_model.store.root)))
    assert result.returncode == 0, result.stderr[-3000:]
    check_predictions(result.stdout, images, trained_model.version)


@pytest.mark.parametrize(("target", "usage"), [
    ("train", "usage: make train EXPORT=FILE IMAGES=DIR"),
    ("demo", "usage: make demo IMAGES=DIR [EXPORT=FILE]"),
])
def test_make_without_arguments_prints_usage(installed, target, usage):
    result = run_make(target)
    assert result.returncode == 2, result.stdout + result.stderr
    assert usage in result.stdout


def test_make_demo_runs_demo_command(tmp_path):
    """Check with `make -n` that each README form runs `thumbnail-ml demo` with options that parse."""
    folder = tmp_path / "thumbnails"
    copy_thumbnails(folder, 2)
    export = tmp_path / "export.json"
    write_json_min_export(export, limit=2)
    values = {"IMAGES=./thumbnails": f"IMAGES={folder}", "EXPORT=export.json": f"EXPORT={export}"}
    forms = [command for command in readme_commands() if command.startswith("make demo IMAGES=")]
    assert len(forms) == 2, forms
    for form in forms:
        words = command_words(form, True, values)
        dry_run = run_make("-n", *words[1:])
        assert dry_run.returncode == 0, dry_run.stderr
        demo_lines = [line for line in dry_run.stdout.splitlines() if line.startswith(".venv/bin/thumbnail-ml demo ")]
        assert len(demo_lines) == 1, dry_run.stdout
        arguments = parse_cli(shlex.split(demo_lines[0])[1:])
        assert arguments.images == folder
        assert arguments.export == (export if "EXPORT=" in form else None)


def test_ci_runs_make_test():
    assert "make test" in readme_commands()
    steps = []
    for line in CI_SCRIPT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "set ", "cd ")):
            steps.append(line)
    assert steps == ["make test"]


def test_make_test_passes_pytest_args():
    command = readme_command("make test PYTEST_ARGS=")
    dry_run = run_make("-n", *shlex.split(command)[1:])
    assert dry_run.returncode == 0, dry_run.stderr
    assert ".venv/bin/python -m pytest -k letterbox" in dry_run.stdout.splitlines()
    # `-k` matches module names too, so it selects the tests of tests/test_letterbox.py.
    assert defined_tests(REPO_ROOT / "tests" / "test_letterbox.py"), "`-k letterbox` selects no test"


BENCH_SCRIPT = re.compile(r"^\.venv/bin/python (bench/\S+\.py)$")


def has_argument_parser(script: Path) -> bool:
    """Return whether the script builds an ``argparse.ArgumentParser``, so that --help only prints help."""
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            if name == "ArgumentParser":
                return True
    return False


@pytest.mark.parametrize("target", ["bench", "bench-research"])
def test_make_bench_scripts_start(target):
    """Check that every script of the target exists and prints its help, since the benchmarks take tens of minutes."""
    assert "make bench" in readme_commands()
    dry_run = run_make("-n", target)
    assert dry_run.returncode == 0, dry_run.stderr
    scripts = [match.group(1) for match in map(BENCH_SCRIPT.match, dry_run.stdout.splitlines()) if match]
    assert scripts, dry_run.stdout
    problems = []
    for script in scripts:
        if not (REPO_ROOT / script).is_file():
            problems.append(f"{script} not found")
        # A script without a parser would ignore --help and run the benchmark or rewrite its page.
        elif not has_argument_parser(REPO_ROOT / script):
            problems.append(f"{script} has no argparse parser, so `--help` would run it")
        else:
            result = subprocess.run([".venv/bin/python", script, "--help"], cwd=REPO_ROOT, capture_output=True,
                                    text=True, timeout=120)
            if result.returncode != 0 or "usage:" not in result.stdout:
                problems.append(f"{script} --help exited with {result.returncode}: {result.stderr[-1000:]}")
    assert problems == []


# -- thumbnail-ml ---------------------------------------------------------------------------


def run_thumbnail_ml(words: list[str], **env: str) -> subprocess.CompletedProcess:
    """Run the ``thumbnail-ml`` console script with ``env`` added to a clean environment."""
    assert words[0] == "thumbnail-ml", words
    environ = {key: value for key, value in os.environ.items() if not key.startswith("LABEL_STUDIO_")}
    return subprocess.run([str(THUMBNAIL_ML), *words[1:]], cwd=REPO_ROOT, env={**environ, **env},
                          capture_output=True, text=True, timeout=180)


def help_subcommands() -> list[str]:
    named = list(readme_subcommands())
    for command in readme_commands():
        words = shlex.split(command)
        if words[0] == "thumbnail-ml" and words[-1] == "--help" and words[1] != "COMMAND":
            named.append(" ".join(words[1:-1]))
    return list(dict.fromkeys(named))


@pytest.mark.parametrize("subcommand", help_subcommands())
def test_command_help(subcommand):
    template = readme_command("thumbnail-ml COMMAND --help")
    words = [word for part in command_words(template, True, {"COMMAND": subcommand}) for word in part.split()]
    result = run_thumbnail_ml(words)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: thumbnail-ml {subcommand} ")
    if subcommand == "demo":
        # README.md: "`.venv/bin/thumbnail-ml demo --help` lists the ports and other options".
        assert "--port" in result.stdout
        assert "--backend-port" in result.stdout


def test_predict_folder_and_file(trained_model, tmp_path):
    folder = tmp_path / "thumbnails"
    images = copy_thumbnails(folder, 3)
    single = tmp_path / "some.jpg"
    shutil.copy(images[0], single)
    values = {"thumbnails/": f"{folder}/", "some.jpg": str(single), "V": trained_model.version, "ID": "3"}
    command = readme_command("thumbnail-ml predict ")
    for with_options in (False, True):
        # Project 3 has no lineage of its own, so the default lineage serves it.
        result = run_thumbnail_ml(command_words(command, with_options, values), MODEL_DIR=str(trained_model.store.root))
        assert result.returncode == 0, result.stderr
        check_predictions(result.stdout, images + [single], trained_model.version)


def test_evaluate_with_and_without_options(trained_model, tmp_path):
    export = tmp_path / "export.json"
    tasks = write_json_min_export(export, limit=120)
    values = {"FILE": str(export), "DIR": str(THUMBNAIL_IMAGES), "V": trained_model.version}
    command = readme_command("thumbnail-ml evaluate ")
    counts = {}
    for with_options in (False, True):
        result = run_thumbnail_ml(command_words(command, with_options, values), MODEL_DIR=str(trained_model.store.root))
        assert result.returncode == 0, result.stderr
        metrics = json.loads(result.stdout)
        assert metrics["model_version"] == trained_model.version
        assert "macro-AP" in result.stderr
        counts[with_options] = metrics["count"]
    assert counts[False] == len(tasks)
    assert 0 < counts[True] < counts[False], "--validation-only evaluates the validation split alone"


def test_report_with_and_without_options(trained_model, tmp_path):
    page = tmp_path / "report.html"
    values = {"V": trained_model.version, "N": "3", "report.html": str(page)}
    command = readme_command("thumbnail-ml report ")
    for with_options in (False, True):
        result = run_thumbnail_ml(command_words(command, with_options, values), MODEL_DIR=str(trained_model.store.root))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"model version  {trained_model.version}")
    assert "<html" in page.read_text(encoding="utf-8").lower()


def test_models_commands_on_trained_store(trained_model, tmp_path):
    """Run `models list`, `show` and `rollback` on a copy of the trained store with a second version."""
    store = ModelStore(tmp_path / "models")
    shutil.copytree(trained_model.store.root, store.root)
    first = trained_model.version
    staging = store.create_staging_dir()
    for name in ("model.tflite", "model.keras"):
        shutil.copy(store.version_dir(first) / name, staging / name)
    manifest = store.manifest(first)
    manifest.parent = first
    second = store.publish(DEFAULT_LINEAGE, staging, manifest).version
    # README.md's example ids are replaced by the stored version with the same number.
    values = {"default-v1-8c0d5e21": first, "default-v2-3fa2c19b": second}
    env = {"MODEL_DIR": str(store.root)}

    def current_marks(stdout: str) -> dict[str, bool]:
        rows = [line.split() for line in stdout.splitlines()[1:]]
        return {row[0]: row[1] == "*" for row in rows}

    for with_options in (False, True):
        listing = run_thumbnail_ml(command_words(readme_command("thumbnail-ml models list"), with_options, values), **env)
        assert listing.returncode == 0, listing.stderr
        assert current_marks(listing.stdout) == {first: False, second: True}

    show_command = readme_command("thumbnail-ml models show ")
    show_text = run_thumbnail_ml(command_words(show_command, False, values), **env)
    assert show_text.returncode == 0, show_text.stderr
    assert show_text.stdout.startswith(f"version      {second}  (current)")
    assert f"parent       {first}" in show_text.stdout
    show_json = run_thumbnail_ml(command_words(show_command, True, values), **env)
    assert show_json.returncode == 0, show_json.stderr
    assert json.loads(show_json.stdout)["version"] == second

    rolled = run_thumbnail_ml(command_words(readme_command("thumbnail-ml models rollback "), True, values), **env)
    assert rolled.returncode == 0, rolled.stderr
    assert rolled.stdout.strip() == f"{DEFAULT_LINEAGE} now serves {first} (was {second})"
    assert store.current_version(DEFAULT_LINEAGE) == first
    listing = run_thumbnail_ml(["thumbnail-ml", "models", "list"], **env)
    assert current_marks(listing.stdout) == {first: True, second: False}


def test_jobs_lists_queued_job(readme_redis):
    queued = enqueue_training(readme_redis, 3, "ANNOTATION_CREATED", job_timeout=600)
    result = run_thumbnail_ml(shlex.split(readme_command("thumbnail-ml jobs")), REDIS_URL=REDIS_URL)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("queue: 1 queued")
    rows = [line.split() for line in lines[1:]]
    assert [row[:4] for row in rows] == [[queued.job_id, "queued", "project", "3"]]


def test_gpu_install_pins_tensorflow():
    words = shlex.split(readme_command(".venv/bin/pip install "))
    assert words[:2] == [".venv/bin/pip", "install"]
    gpu = Requirement(words[2])
    train = [Requirement(line) for line in
             tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["optional-dependencies"]["train"]]
    cpu = next(requirement for requirement in train if requirement.name == "tensorflow-cpu")
    assert gpu.name == "tensorflow"
    assert gpu.extras == {"and-cuda"}
    assert gpu.specifier == cpu.specifier
