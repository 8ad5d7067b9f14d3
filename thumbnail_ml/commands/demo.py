"""``thumbnail-ml demo``: a local Label Studio with a project over a folder of images, pre-labelled by this backend.

The command installs Label Studio 1.23.2 into its own virtual environment on first use and
starts it on 127.0.0.1. It creates a user and a project whose tasks are the images of the
folder (local-files storage), and starts Redis when nothing listens at ``REDIS_URL``, the
backend and a training worker, as ``thumbnail-ml run`` does. Then it connects the backend as
the project's ML backend and prints the address and login. Ctrl-C stops everything it started.

All state (Label Studio's data directory, the login, the model store, the image cache and the
logs) is kept in one directory, so a second run finds the same user, project and models.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import requests

from model.label_config import default_label_config_xml
from model.store import DEFAULT_LINEAGE, ModelStore
from thumbnail_ml.cli import CommandError
from thumbnail_ml.settings import REPO_ROOT, Settings

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = REPO_ROOT / ".cache" / "demo"
STATE_DIR_ENV_VAR = "DEMO_DIR"
DEFAULT_LABEL_STUDIO_PORT = 8080
DEFAULT_EMAIL = "demo@example.com"
ML_BACKEND_TITLE = "thumbnail-ml"
# The file types that training.dataset reads. Label Studio matches the pattern against file names.
IMAGE_NAME_PATTERN = r"(?i).*\.(jpe?g|png|webp|gif)$"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")
BACKEND_STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


@dataclass
class DemoState:
    """The login and projects of a demo state directory, stored as ``demo.json`` (mode 0600).

    Label Studio creates the user only on its first start, so the password has to be kept
    for later runs. The PAT is kept because Label Studio allows one per user.
    """

    email: str
    password: str = field(repr=False)
    legacy_token: str = field(repr=False)
    pat: str | None = field(default=None, repr=False)
    # Project id by the resolved path of its image folder.
    projects: dict[str, int] = field(default_factory=dict)
    # Label Studio stores the tasks of a local-files storage with absolute image URLs on the
    # port of the run that created them, so later runs must use the same port.
    label_studio_port: int | None = None
    # The backend port of the last run, reused when neither --backend-port nor PORT is given.
    backend_port: int | None = None
    # Label Studio signs its tokens with SECRET_KEY. Left to itself, it writes a random key to
    # DATA_DIR/.env, and a key that starts with "$" is read back as a variable reference, so
    # the next start makes a new key and rejects the saved token. The demo passes its own.
    secret_key: str | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: Path) -> DemoState | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise CommandError(f"cannot read the demo login from {path} ({error}): delete its directory to start over")
        return cls(email=data["email"], password=data["password"], legacy_token=data["legacy_token"],
                   pat=data.get("pat"), projects={key: int(value) for key, value in data.get("projects", {}).items()},
                   label_studio_port=data.get("label_studio_port"), secret_key=data.get("secret_key"),
                   backend_port=data.get("backend_port"))

    def save(self, path: Path) -> None:
        """Write the state with owner-only permissions, replacing the file only once it is complete."""
        temporary = path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump({"email": self.email, "password": self.password, "legacy_token": self.legacy_token,
                       "pat": self.pat, "projects": self.projects, "label_studio_port": self.label_studio_port,
                       "secret_key": self.secret_key, "backend_port": self.backend_port},
                      handle, indent=2)
        os.replace(temporary, path)


@dataclass
class DemoPaths:
    """Paths inside a demo's state directory."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "demo.json"

    @property
    def label_studio_data(self) -> Path:
        return self.root / "label-studio"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def image_cache(self) -> Path:
        return self.root / "image-cache"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def _image_folder(raw: Path) -> tuple[Path, int]:
    """Resolve the image folder and count its images, searched recursively."""
    folder = raw.expanduser().resolve()
    if not folder.is_dir():
        raise CommandError(f"image folder {raw} not found: pass --images DIR with the thumbnails to label")
    if folder.parent == folder:
        raise CommandError(f"invalid image folder {folder}: Label Studio serves local files only from a subfolder")
    count = sum(1 for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    if count == 0:
        raise CommandError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) found in {folder}")
    return folder, count


def _train_first_model(export: Path, images: Path, model_dir: Path) -> None:
    """Run ``thumbnail-ml train`` on the export, with its progress on this terminal."""
    print(f"Training a first model from {export} and the images in {images} (this takes a few minutes)...",
          flush=True)
    env = {**os.environ, "MODEL_DIR": str(model_dir)}
    result = subprocess.run([sys.executable, "-m", "thumbnail_ml", "train", "--export", str(export),
                             "--images", str(images)], env=env, stdout=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise CommandError(f"training from {export} failed with exit code {result.returncode} (see the messages above)")


def _load_or_create_state(paths: DemoPaths, email: str) -> DemoState:
    state = DemoState.load(paths.state_file)
    if state is not None:
        return state
    database = paths.label_studio_data / "label_studio.sqlite3"
    if database.exists():
        raise CommandError(
            f"{paths.state_file} is missing, so the login of the Label Studio data in {paths.label_studio_data} "
            f"is unknown: delete {paths.root} to start over, or pass another --state-dir"
        )
    state = DemoState(email=email, password=secrets.token_urlsafe(12), legacy_token=secrets.token_hex(20),
                      secret_key=secrets.token_urlsafe(50))
    state.save(paths.state_file)
    return state


def _ensure_pat(instance, state: DemoState, paths: DemoPaths) -> str:
    """Return the user's personal access token, creating it on the first run."""
    from thumbnail_ml.label_studio_local import (LabelStudioError, create_personal_access_token,
                                                 fetch_access_token)

    if state.pat:
        try:
            fetch_access_token(instance.base_url, state.pat)
            return state.pat
        except LabelStudioError as error:
            raise CommandError(f"the access token in {paths.state_file} was rejected ({error}): delete "
                               f"{paths.root} to start over") from error
    try:
        state.pat = create_personal_access_token(instance.base_url, state.email, state.password)
    except LabelStudioError as error:
        raise CommandError(str(error)) from error
    state.save(paths.state_file)
    return state.pat


def _ensure_project(client, state: DemoState, paths: DemoPaths, images: Path) -> tuple[int, int]:
    """Return the id and task count of the folder's project, creating and syncing it as needed."""
    from label_studio_sdk.core.api_error import ApiError

    project_id = state.projects.get(str(images))
    if project_id is not None:
        try:
            client.projects.get(id=project_id)
        except ApiError as error:
            if error.status_code != 404:
                raise
            logger.info("project %s of %s no longer exists, so a new one is created", project_id, images)
            project_id = None
    if project_id is None:
        project = client.projects.create(title=f"Thumbnails: {images.name}"[:50], label_config=default_label_config_xml(),
                                         show_collab_predictions=True)
        project_id = project.id
        state.projects[str(images)] = project_id
        state.save(paths.state_file)
        logger.info("created project %s for %s", project_id, images)

    storages = [storage for storage in client.import_storage.local.list(project=project_id)
                if Path(storage.path or "") == images]
    if storages:
        storage = storages[0]
    else:
        storage = client.import_storage.local.create(project=project_id, path=str(images), use_blob_urls=True,
                                                     recursive_scan=True, regex_filter=IMAGE_NAME_PATTERN,
                                                     title="thumbnails on disk")
    # Syncing again imports the images added since the last run and skips those already imported.
    client.import_storage.local.sync(id=storage.id)
    tasks = client.projects.get(id=project_id).task_number or 0
    return project_id, tasks


def _start_service(name: str, arguments: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "thumbnail_ml", *arguments], env=env, cwd=REPO_ROOT,
                                   stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    logger.info("started %s (pid %d), log %s", name, process.pid, log_path)
    return process


def _wait_for_backend(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + BACKEND_STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CommandError(f"the backend exited with code {process.returncode} while starting: see {log_path}")
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise CommandError(f"the backend did not respond to {url}/health within {BACKEND_STARTUP_TIMEOUT_S:.0f} s: "
                       f"see {log_path}")


def _connect_backend(client, project_id: int, backend_url: str) -> None:
    """Make ``backend_url`` the project's only ML backend, with interactive pre-annotation.

    Label Studio 1.23.2 adds a webhook to ``<url>/webhook`` for all events when an ML backend is
    created, so submitted annotations reach the backend, which queues training. Backends and
    webhooks of earlier runs at another URL are removed, so that events are not sent twice.
    """
    webhook_url = f"{backend_url}/webhook"
    for backend in client.ml.list(project=project_id):
        # Label Studio 1.23.2 responds with HTTP 500 to partial updates of an ML backend, so a backend that
        # differs in anything is replaced, not updated.
        if backend.url.rstrip("/") == backend_url and backend.title == ML_BACKEND_TITLE and backend.is_interactive:
            logger.info("ML backend %s is already connected to project %s", backend_url, project_id)
            return
        logger.info("removing ML backend %s (%s) from project %s", backend.id, backend.url, project_id)
        client.ml.delete(id=backend.id)
        for webhook in client.webhooks.list(project=project_id):
            if webhook.url.rstrip("/") == f"{backend.url.rstrip('/')}/webhook":
                client.webhooks.delete(id=webhook.id)

    created = client.ml.create(project=project_id, url=backend_url, title=ML_BACKEND_TITLE, is_interactive=True,
                               auto_update=True)
    if created.state != "CO":
        raise CommandError(f"Label Studio could not connect to the backend at {backend_url} (state {created.state}): "
                           "see the backend log")
    hooks = [webhook.url for webhook in client.webhooks.list(project=project_id)]
    if webhook_url not in hooks:
        logger.warning("Label Studio added no webhook to %s, so annotations will not queue training", webhook_url)


def _stop(name: str, process: subprocess.Popen) -> None:
    """Stop a child started in its own session: SIGTERM to its process group, SIGKILL after STOP_TIMEOUT_S."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) did not exit %.0f s after SIGTERM; sending SIGKILL", name, process.pid,
                           STOP_TIMEOUT_S)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)
    # Children that outlived the group leader still carry its group id.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    logger.info("stopped %s (pid %d)", name, process.pid)


def _newest_project_version(store: ModelStore) -> str | None:
    """Return the current version of a project lineage, trained by an earlier run, or None."""
    for lineage in sorted(store.lineages()):
        version = store.current_version(lineage)
        if version is not None:
            return version
    return None


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _print_summary(*, url: str, state: DemoState, project_id: int, tasks: int, images: Path, backend_url: str,
                   version: str | None, settings: Settings, paths: DemoPaths) -> None:
    if version:
        model = f"{version}; a new version is trained after annotations are submitted"
    else:
        model = (f"none trained yet. Predictions appear after the first training, which starts once "
                 f"{settings.min_labelled_tasks} tasks are labelled (MIN_LABELLED_TASKS) and 5 of them fall in "
                 "the validation split: often 25 to 30")
    print(
        f"\nLabel Studio is running at {url}/projects/{project_id}/data\n"
        f"  login:      {state.email}\n"
        f"  password:   {state.password}\n"
        f"  project:    {tasks} tasks from {images}\n"
        f"  ML backend: {backend_url} (interactive pre-annotation on; submitted annotations queue training)\n"
        f"  model:      {model}\n"
        f"  state:      {paths.root} (delete the directory to start over)\n"
        f"  logs:       {paths.logs} (backend, worker), {paths.label_studio_data / 'label-studio.log'}\n"
        f"  CLI:        export LABEL_STUDIO_URL={url} MODEL_DIR={paths.models} REDIS_URL={settings.redis_url}\n"
        # The command reads the token from the state file, so the token never appears on the screen.
        f"              export LABEL_STUDIO_API_KEY=\"$(python3 -c 'import json,sys; "
        f"print(json.load(open(sys.argv[1]))[\"pat\"])' {shlex.quote(str(paths.state_file))})\"\n"
        "Press Ctrl-C to stop Label Studio, the backend and the worker.\n",
        flush=True,
    )


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Start Label Studio, Redis if needed, the backend and a worker; stop them all on Ctrl-C or SIGTERM."""
    from thumbnail_ml.label_studio_local import (LabelStudioError, create_sdk_client,
                                                 ensure_label_studio_installed, start_label_studio)
    from thumbnail_ml.run import RunError, _start_redis_if_needed

    images, image_count = _image_folder(args.images)
    if args.export is not None and not args.export.is_file():
        raise CommandError(f"export file {args.export} not found")
    paths = DemoPaths(args.state_dir.expanduser().resolve())
    for directory in (paths.root, paths.label_studio_data, paths.models, paths.image_cache, paths.logs):
        directory.mkdir(parents=True, exist_ok=True)
    state = _load_or_create_state(paths, args.email)

    store = ModelStore(paths.models)
    version = store.resolve(DEFAULT_LINEAGE) or _newest_project_version(store)
    if version is None and args.export is not None:
        _train_first_model(args.export, images, paths.models)
        version = store.resolve(DEFAULT_LINEAGE)
    elif version is None:
        print(f"No model is trained yet in {paths.models}: predictions appear after the first training, once "
              f"{settings.min_labelled_tasks} to about 30 tasks are labelled. To start with a model, pass a Label Studio "
              "export of these images (make demo EXPORT=FILE, or --export FILE).", flush=True)
    elif args.export is not None:
        print(f"{paths.models} already has model {version}, so --export {args.export} is not trained on. Delete "
              f"{paths.models} to train from it again.", flush=True)

    # SIGTERM takes the same way out as Ctrl-C, so the children are stopped in both cases. SIGINT
    # gets the handler explicitly: a process started in the background of a non-interactive
    # shell inherits it as ignored, and would otherwise never stop on SIGINT.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    children: list[tuple[str, subprocess.Popen]] = []
    label_studio = None
    try:
        print("Starting Label Studio (the first run installs it, about 1 GB, and sets up its database)...",
              flush=True)
        try:
            executable = ensure_label_studio_installed()
            # The storage folder must be strictly below Label Studio's local-files document root.
            # NOTE: Label Studio then serves every file below the folder's parent to its logged-in users,
            # and images of an earlier project over a folder with another parent are not served this run.
            label_studio = start_label_studio(
                executable, data_dir=paths.label_studio_data, document_root=images.parent, email=state.email,
                password=state.password, legacy_token=state.legacy_token, port=args.port,
                extra_env={"SECRET_KEY": state.secret_key} if state.secret_key else None,
            )
        except LabelStudioError as error:
            raise CommandError(str(error)) from error
        children.append(("Label Studio", label_studio.process))
        if state.label_studio_port != args.port:
            state.label_studio_port = args.port
            state.save(paths.state_file)
        instance = label_studio.with_pat(_ensure_pat(label_studio.instance, state, paths))
        client = create_sdk_client(instance)
        project_id, tasks = _ensure_project(client, state, paths, images)
        if tasks < image_count:
            logger.warning("project %s has %d tasks for %d images in %s", project_id, tasks, image_count, images)

        try:
            redis = _start_redis_if_needed(settings)
        except RunError as error:
            raise CommandError(str(error)) from error
        if redis is not None:
            children.append(("redis-server", redis))
        backend_url = f"http://127.0.0.1:{args.backend_port}"
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(args.backend_port),
            "MODEL_DIR": str(paths.models),
            "IMAGE_CACHE_DIR": str(paths.image_cache),
            "REDIS_URL": settings.redis_url,
            "LABEL_STUDIO_URL": instance.base_url,
            "LABEL_STUDIO_API_KEY": instance.pat,
            # The backend reads images from disk rather than downloading them from Label Studio.
            "LOCAL_FILES_DOCUMENT_ROOT": str(instance.document_root),
            "LABEL_STUDIO_BASE_DATA_DIR": str(instance.data_dir),
        }
        backend_log = paths.logs / "backend.log"
        backend = _start_service("backend", ["serve"], env, backend_log)
        children.append(("backend", backend))
        children.append(("worker", _start_service("worker", ["worker"], env, paths.logs / "worker.log")))
        _wait_for_backend(backend_url, backend, backend_log)
        _connect_backend(client, project_id, backend_url)
        if state.backend_port != args.backend_port:
            state.backend_port = args.backend_port
            state.save(paths.state_file)

        _print_summary(url=instance.base_url, state=state, project_id=project_id, tasks=tasks, images=images,
                       backend_url=backend_url, version=version, settings=settings, paths=paths)
        while True:
            for name, process in children:
                if process.poll() is not None:
                    raise CommandError(f"{name} exited with code {process.returncode}, so the demo stopped "
                                       f"(logs in {paths.logs} and {paths.label_studio_data / 'label-studio.log'})")
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nStopping...", file=sys.stderr, flush=True)
    finally:
        # A second Ctrl-C must not cut the shutdown short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for name, process in reversed(children):
            if label_studio is not None and process is label_studio.process:
                label_studio.stop(remove_dirs=False)
                logger.info("stopped %s (pid %d)", name, process.pid)
            else:
                _stop(name, process)
    return 0


def register(commands) -> None:
    """Add the ``demo`` subcommand to the ``thumbnail-ml`` parser."""
    sub = commands.add_parser(
        "demo",
        help="start a local Label Studio with a project over a folder of images, pre-labelled by this backend",
        description=(
            "Install (on first use) and start Label Studio 1.23.2 on 127.0.0.1, create a user and a project "
            "over the images in --images, start Redis (if nothing listens at REDIS_URL), the backend and a "
            "training worker, connect the backend to the project, and print the address and login. "
            "Ctrl-C stops everything it started."
        ),
    )
    sub.add_argument("--images", required=True, type=Path, metavar="DIR",
                     help="folder of images to label (.jpg, .jpeg, .png, .webp, .gif; subfolders are included)")
    sub.add_argument("--export", type=Path, metavar="FILE",
                     help="Label Studio export of these images: trains a first model when the demo has none")
    sub.add_argument("--state-dir", type=Path, default=Path(os.environ.get(STATE_DIR_ENV_VAR) or DEFAULT_STATE_DIR),
                     metavar="DIR", help=f"directory for Label Studio's data, the login, the models and the logs "
                                         f"(default: {STATE_DIR_ENV_VAR} or .cache/demo)")
    sub.add_argument("--port", type=int,
                     help=f"Label Studio port on 127.0.0.1 (default: the port of the state directory's first run, "
                          f"else {DEFAULT_LABEL_STUDIO_PORT})")
    sub.add_argument("--backend-port", type=int,
                     help="backend port on 127.0.0.1 (default: PORT, else the last run's port, else 9090)")
    sub.add_argument("--email", default=DEFAULT_EMAIL,
                     help=f"login of the Label Studio user created on the first run (default: {DEFAULT_EMAIL})")
    sub.set_defaults(handler=_handle)


def _resolve_label_studio_port(args: argparse.Namespace) -> int:
    """Return the Label Studio port: the one the state directory's tasks were created on, if any."""
    saved = DemoState.load(DemoPaths(args.state_dir.expanduser().resolve()).state_file)
    saved_port = saved.label_studio_port if saved is not None else None
    if args.port is None:
        return saved_port or DEFAULT_LABEL_STUDIO_PORT
    if saved_port is not None and args.port != saved_port:
        raise CommandError(
            f"the tasks in {args.state_dir} were created with Label Studio on port {saved_port}, and their image "
            f"URLs point there: run with --port {saved_port}, or pass another --state-dir (or delete "
            f"{args.state_dir}) to start over on port {args.port}"
        )
    return args.port


def _handle(args: argparse.Namespace, settings: Settings) -> int:
    if args.backend_port is None:
        saved = DemoState.load(DemoPaths(args.state_dir.expanduser().resolve()).state_file)
        remembered = saved.backend_port if saved is not None and "PORT" not in os.environ else None
        args.backend_port = remembered or settings.port
    args.port = _resolve_label_studio_port(args)
    for option, port in (("--port", args.port), ("--backend-port", args.backend_port)):
        if not 1 <= port <= 65535:
            raise CommandError(f"invalid {option} {port}: expected a TCP port between 1 and 65535")
    if args.port == args.backend_port:
        raise CommandError(f"--port and --backend-port are both {args.port}: choose two different ports")
    return cmd_demo(args, replace(settings, port=args.backend_port))
