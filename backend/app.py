"""The HTTP server Label Studio connects to: /health, /setup, /predict, /webhook, /versions, /metrics.

``create_app`` builds a Flask app from a ``Settings`` object. ``backend.server`` runs it under
gunicorn with threads; tests call it directly or through a real server on 127.0.0.1.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import uuid
from base64 import b64decode

from flask import Flask, Response, g, jsonify, request
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from werkzeug.exceptions import HTTPException

from backend.images import FetchError, ImageFetcher
from backend.label_studio import LabelStudioStatus
from backend.metrics import ServerMetrics
from backend.protocol import (
    NO_MODEL_VERSION, ProtocolError, choices_result, empty_result, read_tasks, task_input,
)
from backend.serving import ModelRegistry
from model.label_config import LabelConfig, LabelConfigError, default_label_config_xml, parse_label_config
from model.store import DEFAULT_LINEAGE, ModelStore, StoreError, lineage_for_project
from thumbnail_ml.settings import Settings
from training.jobs_report import recent_jobs
from training.queue import enqueue_training, queue_state

logger = logging.getLogger(__name__)

# Webhook actions that change what the model should learn; the training worker acts on them.
TRAINING_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING"}


class Backend:
    """State shared by the request handlers of one serving process."""

    def __init__(self, settings: Settings, store: ModelStore, fetcher: ImageFetcher):
        self.settings = settings
        self.store = store
        self.fetcher = fetcher
        self.metrics = ServerMetrics()
        self.models = ModelRegistry(store, threads=1, on_load=lambda version: self.metrics.model_loads.inc())
        self.label_studio = LabelStudioStatus(self._label_studio_url)
        self.default_config = parse_label_config(default_label_config_xml())
        self.setup_hostname: str | None = None
        # Preprocessing and inference take the CPU: at most ``threads`` requests do so at once,
        # and the others wait their turn instead of thrashing the cores.
        self.cpu_slots = threading.BoundedSemaphore(settings.threads)
        self._warned_dropped: set[tuple[str, tuple[str, ...]]] = set()
        # Short timeouts keep webhook and /health replies within Label Studio's 1 s limits,
        # even when Redis is down.
        self.redis = Redis.from_url(settings.redis_url, socket_connect_timeout=0.25, socket_timeout=0.5,
                                    retry=Retry(NoBackoff(), 0))

    def queue_snapshot(self) -> dict:
        """Return the training queue's state and running jobs' progress, or why it is unavailable."""
        try:
            state = queue_state(self.redis)
            state["jobs"] = [
                {key: job.get(key) for key in ("id", "status", "project", "progress", "result_summary", "error")}
                for job in recent_jobs(self.redis, limit=5)
            ]
            return {"available": True, **state}
        except RedisError as error:
            return {"available": False, "error": f"cannot reach Redis at REDIS_URL ({type(error).__name__})"}

    def _label_studio_url(self) -> str | None:
        return self.settings.label_studio_url or self.setup_hostname

    def warn_dropped_once(self, lineage: str, dropped: tuple[str, ...]) -> None:
        key = (lineage, dropped)
        if dropped and key not in self._warned_dropped:
            self._warned_dropped.add(key)
            logger.warning("lineage %s: model classes %s are not in the project's labeling config and are not predicted",
                           lineage, ", ".join(dropped))


def _json_error(status: int, message: str, **extra) -> tuple[Response, int]:
    return jsonify({"error": message, **extra}), status


def _check_basic_auth(settings: Settings) -> bool:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return False
    try:
        user, _, password = b64decode(header[6:], validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    # Compare both parts in full, in constant time, so timing reveals neither.
    user_ok = hmac.compare_digest(user.encode(), (settings.basic_auth_user or "").encode())
    password_ok = hmac.compare_digest(password.encode(), (settings.basic_auth_pass or "").encode())
    return user_ok and password_ok


def _project_of(payload: dict) -> object:
    project = payload.get("project")
    if isinstance(project, dict):
        return project.get("id")
    return project


def create_app(settings: Settings, store: ModelStore | None = None, fetcher: ImageFetcher | None = None) -> Flask:
    """Build the ML backend app for ``settings``."""
    app = Flask("thumbnail_ml_backend")
    app.json.sort_keys = False
    backend = Backend(settings, store or ModelStore(settings.model_dir), fetcher or ImageFetcher(settings))
    app.extensions["thumbnail_ml"] = backend

    @app.before_request
    def start_request():
        g.started = time.perf_counter()
        g.request_id = uuid.uuid4().hex[:12]
        if settings.basic_auth_user and not _check_basic_auth(settings):
            response, status = _json_error(401, "authentication required: send the BASIC_AUTH_USER credentials")
            response.headers["WWW-Authenticate"] = 'Basic realm="thumbnail-ml"'
            return response, status
        return None

    @app.after_request
    def finish_request(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unknown"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        backend.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        backend.metrics.latency.labels(endpoint).observe(elapsed)
        return response

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return _json_error(error.code or 500, error.description or error.name)

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception):
        logger.exception("request %s %s failed (request id %s)", request.method, request.path, g.get("request_id"))
        return _json_error(500, "internal error; the server log has the details", request_id=g.get("request_id"))

    # -- /health -------------------------------------------------------------------------

    @app.get("/")
    @app.get("/health")
    def health():
        versions = backend.models.loaded_versions()
        trained = any(versions.values())
        body = {
            "status": "UP",
            "model_dir": str(settings.model_dir),
            "model_versions": versions,
            "model_trained": trained,
            "loaded_models": backend.models.loaded_count(),
            "label_studio": backend.label_studio.snapshot(),
            "queue": backend.queue_snapshot(),
        }
        if not trained:
            body["message"] = (
                "no model is trained yet: predictions are empty until one is published "
                "(thumbnail-ml train, or annotate tasks and let the worker train)"
            )
        if backend.models.load_errors:
            body["load_errors"] = dict(backend.models.load_errors)
        return jsonify(body)

    # -- /setup --------------------------------------------------------------------------

    @app.post("/setup")
    def setup():
        payload = request.get_json(silent=True)
        if not isinstance(payload, dict):
            return _json_error(400, "request body must be a JSON object with 'project' and 'schema'")
        try:
            lineage = lineage_for_project(_project_of(payload)) if _project_of(payload) else DEFAULT_LINEAGE
            config = parse_label_config(payload.get("schema") or "")
        except (LabelConfigError, StoreError) as error:
            logger.warning("setup rejected for project %s: %s", _project_of(payload), error)
            return _json_error(422, f"cannot serve this project: {error}")

        version = backend.models.version_for(lineage)
        if version is not None:
            classes = set(backend.store.manifest(version).classes)
            if not classes & set(config.choices):
                message = (f"none of the config's choices ({', '.join(config.choices)}) is a class of model "
                           f"{version} ({', '.join(sorted(classes))})")
                logger.warning("setup rejected for project %s: %s", _project_of(payload), message)
                return _json_error(422, f"cannot serve this project: {message}")
            # Load the model now, so the first prediction does not wait for it.
            threading.Thread(target=_warm, args=(backend, lineage), daemon=True).start()

        hostname = payload.get("hostname")
        if not settings.label_studio_url and isinstance(hostname, str) and hostname:
            backend.setup_hostname = hostname.rstrip("/")
        if not settings.label_studio_api_key or not settings.label_studio_url:
            token = payload.get("access_token")
            backend.fetcher.set_label_studio_credentials(
                hostname if isinstance(hostname, str) else None, token if isinstance(token, str) else None
            )
            backend.label_studio.refresh_soon()
        logger.info("setup project %s (lineage %s): model version %s", _project_of(payload), lineage,
                    version or NO_MODEL_VERSION)
        return jsonify({"model_version": version or NO_MODEL_VERSION})

    # -- /predict ------------------------------------------------------------------------

    @app.post("/predict")
    def predict():
        started = time.perf_counter()
        payload = request.get_json(silent=True)
        try:
            tasks = read_tasks(payload)
            project = _project_of(payload)
            lineage = lineage_for_project(project) if project else DEFAULT_LINEAGE
            schema = payload.get("label_config")
            config = parse_label_config(schema) if schema else backend.default_config
        except (ProtocolError, LabelConfigError, StoreError) as error:
            logger.warning("predict rejected (project %s): %s",
                           _project_of(payload) if isinstance(payload, dict) else None, error)
            return _json_error(400, str(error))

        predictor = backend.models.predictor_for(lineage)
        if predictor is None:
            # Label Studio stores every result it gets, empty ones too, and keeps them after the
            # first model arrives. With no model there is nothing to store, so no results.
            backend.metrics.prediction_errors.labels("no_model").inc(len(tasks))
            logger.info("predict project %s: %d tasks, no model is trained yet for lineage %s",
                        project, len(tasks), lineage)
            return jsonify({"results": [], "model_version": NO_MODEL_VERSION})
        version = predictor.version
        results, failures = _predict_tasks(backend, predictor, config, lineage, tasks, version)
        backend.metrics.predicted_tasks.inc(len(tasks) - len(failures))
        for reason in failures.values():
            backend.metrics.prediction_errors.labels(reason).inc()
        logger.info(
            "predict project %s: %d tasks, %d failed, model version %s, %.1f ms",
            project, len(tasks), len(failures), version, (time.perf_counter() - started) * 1000,
        )
        return jsonify({"results": results, "model_version": version})

    # -- /webhook ------------------------------------------------------------------------

    @app.post("/webhook")
    def webhook():
        payload = request.get_json(silent=True)
        if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
            logger.warning("webhook rejected: the body is not a JSON object with an 'action'")
            return _json_error(400, "webhook body must be a JSON object with an 'action'")
        action = payload["action"]
        project = _project_of(payload)

        # The payload's project object carries the project's token: only its id is ever logged.
        if action not in TRAINING_ACTIONS:
            backend.metrics.webhooks.labels("other", "ignored").inc()
            logger.info("webhook %s for project %s: ignored (does not change annotations)", action, project)
            return jsonify({"status": "ignored", "action": action}), 200

        try:
            project_id = int(str(project).split(".", 1)[0])
            if project_id < 1:
                raise ValueError(project_id)
        except (TypeError, ValueError):
            backend.metrics.webhooks.labels(action, "invalid").inc()
            logger.warning("webhook %s without a valid project id (%r): not queued", action, project)
            return _json_error(400, f"webhook {action} has no valid project id; nothing was queued")

        try:
            queued = enqueue_training(backend.redis, project_id, action, settings.training_job_timeout)
        except RedisError as error:
            backend.metrics.webhooks.labels(action, "queue_unavailable").inc()
            logger.error("webhook %s for project %s: training queue unavailable (%s: %s)", action, project_id,
                         type(error).__name__, error)
            return _json_error(503, "training queue unavailable: cannot reach Redis at REDIS_URL. Nothing was "
                                    "queued; the next annotation event after Redis is back trains on everything")

        outcome = "coalesced" if queued.coalesced else "queued"
        backend.metrics.webhooks.labels(action, outcome).inc()
        logger.info("webhook %s for project %s: %s as job %s", action, project_id, outcome, queued.job_id)
        return jsonify({"status": outcome, "action": action, "job_id": queued.job_id}), 200

    # -- /versions and /metrics ----------------------------------------------------------

    @app.get("/versions")
    def versions():
        project = request.args.get("project")
        try:
            lineages = [lineage_for_project(project)] if project else backend.store.lineages()
        except StoreError as error:
            return _json_error(400, str(error))
        found = []
        for lineage in lineages:
            found.extend(manifest.version for manifest in reversed(backend.store.versions(lineage)))
        current = {lineage: backend.store.current_version(lineage) for lineage in lineages}
        return jsonify({"versions": found, "current": current})

    @app.get("/metrics")
    def metrics():
        backend.metrics.loaded_models.set(backend.models.loaded_count())
        backend.metrics.current_version.info({"version": backend.models.version_for(DEFAULT_LINEAGE) or NO_MODEL_VERSION})
        body, content_type = backend.metrics.render()
        return Response(body, content_type=content_type)

    return app


def _warm(backend: Backend, lineage: str) -> None:
    try:
        backend.models.predictor_for(lineage)
    except (OSError, ValueError, StoreError):
        pass  # logged by the registry; /health reports it


def _predict_tasks(backend: Backend, predictor, config: LabelConfig, lineage: str, tasks: list,
                   version: str) -> tuple[list[dict], dict[int, str]]:
    """Predict every task: choices where the image could be predicted, an empty result otherwise.

    Returns:
        The results in task order, and task index -> failure reason for the empty ones.
    """
    results: list[dict | None] = [None] * len(tasks)
    failures: dict[int, str] = {}

    def fail(index: int, task_id, reason: str, message: str) -> None:
        failures[index] = reason
        results[index] = empty_result(version)
        logger.warning("task %s: no prediction (%s): %s", task_id, reason, message)


    allowed = set(config.choices) & set(predictor.classes)
    backend.warn_dropped_once(lineage, tuple(name for name in predictor.classes if name not in config.choices))
    if not allowed:
        for index, task in enumerate(tasks):
            task_id = task.get("id") if isinstance(task, dict) else None
            fail(index, task_id, "no_common_classes", "the labeling config offers none of the model's classes")
        return results, failures

    inputs = [task_input(task, config) for task in tasks]
    pending = []
    for index, item in enumerate(inputs):
        if item.error:
            fail(index, item.task_id, "invalid_task", item.error)
        else:
            pending.append(index)

    downloads = backend.fetcher.fetch_many([(inputs[i].task_id, inputs[i].image_url) for i in pending])
    images = []
    for index, outcome in zip(pending, downloads):
        if isinstance(outcome, FetchError):
            fail(index, inputs[index].task_id, outcome.reason, str(outcome))
        else:
            images.append((index, outcome))
    if not images:
        return results, failures

    with backend.cpu_slots:
        prepared = predictor.preprocess(
            [(f"task {inputs[i].task_id}", data) for i, data in images],
            threads=min(backend.settings.threads, len(images)),
        )
        probabilities = predictor.predict_pixels(prepared.pixels)
    for position, error in prepared.errors.items():
        index = images[position][0]
        fail(index, inputs[index].task_id, error.reason, str(error))

    decisions = predictor.decide(probabilities, allowed)
    for position, decision in zip(prepared.ok_indices, decisions):
        index = images[position][0]
        choices = decision.choices
        if not config.multiple and len(choices) > 1:
            choices = [max(choices, key=lambda name: decision.probabilities[name])]
        results[index] = choices_result(config, choices, decision.score, version)
    return results, failures
