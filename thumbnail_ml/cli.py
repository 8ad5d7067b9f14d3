"""The ``thumbnail-ml`` command line: train, evaluate, predict and manage model versions.

Commands that train import TensorFlow; ``predict``, ``evaluate`` and ``models`` use only the
LiteRT serving runtime, so they start in well under a second.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from model.label_config import LabelConfigError, default_label_config_xml, load_label_config
from model.store import DEFAULT_LINEAGE, ModelStore, StoreError, lineage_for_project
from thumbnail_ml.settings import Settings, SettingsError, configure_logging

logger = logging.getLogger("thumbnail_ml.cli")


class CommandError(Exception):
    """A command that cannot complete; its message is printed without a traceback."""


def _lineage(args) -> str:
    return lineage_for_project(getattr(args, "project", None))


def no_model_error(store: ModelStore, lineage: str) -> CommandError:
    """Describe a lineage without a model, naming the other lineages of the store that have one."""
    others = [name for name in sorted(store.lineages()) if name != lineage and store.current_version(name)]
    if others:
        options = ", ".join(f"--project {name.removeprefix('project-')}" if name.startswith("project-") else name
                            for name in others)
        hint = f"; this store has models in {', '.join(others)}: pass {options}"
    else:
        hint = (": train one with 'thumbnail-ml train --export FILE --images DIR', or set MODEL_DIR to a store "
                "that has one")
    return CommandError(f"no model is trained yet in {store.root} (lineage {lineage}){hint}")


def _resolve_version(store: ModelStore, args) -> str:
    if getattr(args, "model_version", None):
        store.manifest(args.model_version)
        return args.model_version
    lineage = _lineage(args)
    version = store.resolve(lineage)
    if version is None:
        raise no_model_error(store, lineage)
    return version


# -- label-config ---------------------------------------------------------------------------


def cmd_label_config(args, settings: Settings) -> int:
    sys.stdout.write(default_label_config_xml())
    return 0


# -- train and evaluate ---------------------------------------------------------------------


def _read_labelled(args, settings: Settings):
    from training.dataset import ImageIndex
    from training.exports import read_export

    config_path = args.label_config or settings.label_config
    config, _ = load_label_config(str(config_path) if config_path else None)
    tasks, report = read_export(args.export, config, settings.exclusive_choice)
    images = ImageIndex(args.images)
    return config, tasks, report, images


def _print_export_report(report, dataset_dropped, tasks_count: int, out=sys.stderr) -> None:
    summary = report.to_dict()
    summary["images"] = {"paired_and_decoded": tasks_count - sum(dataset_dropped.values()), **dict(dataset_dropped)}
    print("export report: " + json.dumps(summary, indent=2), file=out)


def _input_spec(args):
    from model.preprocess import InputSpec

    try:
        height, width = (int(part) for part in args.input_size.lower().split("x"))
    except ValueError:
        raise CommandError(f"invalid --input-size {args.input_size!r}: expected HEIGHTxWIDTH, for example 126x224") from None
    if not (16 <= height <= 1080 and 16 <= width <= 1920):
        raise CommandError(f"invalid --input-size {args.input_size!r}: each side must be between 16 and 1920 pixels")
    return InputSpec(height=height, width=width, channels=1 if args.grayscale else 3)


def cmd_train(args, settings: Settings) -> int:
    from model.letterbox import CropSettings
    from training.dataset import build_dataset

    config, tasks, report, images = _read_labelled(args, settings)
    spec = _input_spec(args)
    dataset = build_dataset(tasks, images, list(config.choices), spec, CropSettings(), threads=settings.threads)
    _print_export_report(report, dataset.dropped, len(tasks))
    if len(dataset) == 0:
        missing = dataset.dropped.get("image_missing", 0)
        raise CommandError(
            f"nothing to train on: {report.used:,} annotated tasks in {args.export}, and "
            f"{missing:,} of their images were not found under {args.images} ({len(images):,} image files "
            "there). Images are paired by the file name in each task's image URL: put the exported "
            "tasks' image files in that folder (subfolders are searched)"
        )
    if args.check:
        print(f"check only: {len(dataset)} examples ready, nothing trained", file=sys.stderr)
        return 0

    # TensorFlow is imported only here: every other command starts without it.
    from training.trainer import TrainingError, TrainingOptions, describe, train_version

    store = ModelStore(settings.model_dir)
    lineage = _lineage(args)
    parent = store.current_version(lineage)
    options = TrainingOptions(
        architecture=args.architecture,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        patience=args.patience,
        from_scratch=args.from_scratch,
    )

    def progress(event: dict) -> None:
        if event.get("stage") == "training":
            print(
                f"epoch {event['epoch']:>3}/{event['epochs']}  loss {event['loss']:.4f}  "
                f"val macro-AP {event['val_macro_ap']:.4f}  best {event['best_val_macro_ap']:.4f}  "
                f"{event['seconds']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        elif event.get("stage") == "starting":
            print(f"training on {event['train']} images, validating on {event['validation']}", file=sys.stderr)

    try:
        outcome = train_version(
            dataset, store, lineage, settings.exclusive_choice, options, parent=parent,
            source={"export": str(args.export), "images": str(args.images)}, progress=progress,
        )
    except TrainingError as error:
        raise CommandError(str(error)) from error

    from model.metrics import format_report

    print(format_report(outcome.manifest.metrics), file=sys.stderr)
    print(describe(outcome))
    if not outcome.published:
        raise CommandError(f"the new model was not published: {outcome.reason}")
    return 0


def cmd_evaluate(args, settings: Settings) -> int:
    import numpy as np

    from model.letterbox import CropSettings
    from model.metrics import evaluate, format_report
    from model.preprocess import InputSpec
    from training.dataset import build_dataset

    store = ModelStore(settings.model_dir)
    version = _resolve_version(store, args)
    predictor = store.load_predictor(version)
    manifest = predictor.manifest
    config, tasks, report, images = _read_labelled(args, settings)
    dataset = build_dataset(tasks, images, list(manifest.classes), InputSpec.from_dict(manifest.input),
                            CropSettings.from_dict(manifest.crop), threads=settings.threads)
    _print_export_report(report, dataset.dropped, len(tasks))
    if len(dataset) == 0:
        raise CommandError(f"no labelled image of {args.export} was found under {args.images}")
    if args.validation_only:
        _, dataset = dataset.split()
    probabilities = np.concatenate(
        [predictor.predict_pixels(dataset.pixels[i : i + 64]) for i in range(0, len(dataset), 64)]
    )
    metrics = evaluate(dataset.labels, probabilities, manifest.classes, predictor.thresholds)
    metrics["model_version"] = version
    print(format_report(metrics), file=sys.stderr)
    print(json.dumps(metrics, indent=2))
    return 0


# -- predict --------------------------------------------------------------------------------


def _expand_images(paths: Sequence[str]) -> list[Path]:
    from training.dataset import IMAGE_SUFFIXES

    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise CommandError(f"image {raw} not found")
    return files


def cmd_predict(args, settings: Settings) -> int:
    store = ModelStore(settings.model_dir)
    version = _resolve_version(store, args)
    predictor = store.load_predictor(version, num_threads=settings.threads)
    files = _expand_images(args.images)
    if not files:
        raise CommandError(f"no image files (.jpg, .jpeg, .png, .webp, .gif) found in {' '.join(args.images)}")

    failures = 0
    for start in range(0, len(files), args.batch_size):
        batch = files[start : start + args.batch_size]
        items = []
        for path in batch:
            try:
                items.append((str(path), path.read_bytes()))
            except OSError as error:
                items.append((str(path), b""))
                logger.warning("cannot read %s: %s", path, error.strerror)
        prepared = predictor.preprocess(items, threads=settings.threads)
        decisions = predictor.decide(predictor.predict_pixels(prepared.pixels))
        by_index = dict(zip(prepared.ok_indices, decisions))
        for index, path in enumerate(batch):
            if index in prepared.errors:
                failures += 1
                error = prepared.errors[index]
                record = {"image": str(path), "error": error.reason, "message": str(error), "model_version": version}
            else:
                decision = by_index[index]
                record = {
                    "image": str(path),
                    "choices": decision.choices,
                    "probabilities": {k: round(v, 6) for k, v in decision.probabilities.items()},
                    "score": decision.score,
                    "model_version": version,
                }
            print(json.dumps(record), flush=True)
    if failures:
        logger.warning("%d of %d images could not be predicted", failures, len(files))
    return 0 if failures < len(files) else 1


# -- serve ----------------------------------------------------------------------------------


def cmd_serve(args, settings: Settings) -> int:
    from dataclasses import replace

    from backend.server import serve

    overrides = {key: value for key, value in
                 (("host", args.host), ("port", args.port), ("workers", args.workers), ("threads", args.threads))
                 if value is not None}
    serve(replace(settings, **overrides))
    return 0


def cmd_run(args, settings: Settings) -> int:
    from thumbnail_ml.run import RunError, run_all

    try:
        return run_all(settings)
    except RunError as error:
        raise CommandError(str(error)) from error


# -- worker and jobs ------------------------------------------------------------------------


def cmd_worker(args, settings: Settings) -> int:
    from redis.exceptions import RedisError

    from training.worker import run_worker

    try:
        run_worker(settings, burst=args.burst, name=args.name)
    except RedisError as error:
        raise CommandError(f"cannot reach Redis at REDIS_URL ({type(error).__name__}: {error}); "
                           "start redis-server or set REDIS_URL") from error
    return 0


def cmd_jobs(args, settings: Settings) -> int:
    from redis import Redis
    from redis.exceptions import RedisError

    from training.jobs_report import recent_jobs
    from training.preannotate import PREANNOTATE_QUEUE
    from training.queue import QUEUE_NAME, queue_state

    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        state = queue_state(redis)
        jobs = recent_jobs(redis, limit=args.limit, queues=(QUEUE_NAME, PREANNOTATE_QUEUE))
    except RedisError as error:
        raise CommandError(f"cannot reach Redis at REDIS_URL ({type(error).__name__}); start redis-server or set REDIS_URL") from error
    if args.json:
        print(json.dumps({"queue": state, "jobs": jobs}, indent=2, default=str))
        return 0
    print(f"queue: {state['queued']} queued, {state['deferred']} waiting, {state['started']} running, "
          f"{state['failed']} failed, {state['finished']} finished; {state['workers']} worker(s)")
    for job in jobs:
        progress = job.get("progress") or {}
        detail = job.get("result_summary") or job.get("error") or progress.get("stage", "")
        print(f"{job['id']:<44} {job['status']:<10} project {job.get('project')!s:<6} {job.get('enqueued_at') or ''}  {detail}")
    return 0


# -- models ---------------------------------------------------------------------------------


def cmd_models_list(args, settings: Settings) -> int:
    store = ModelStore(settings.model_dir)
    lineages = [args.lineage] if args.lineage else store.lineages()
    if not lineages:
        print(f"no model versions in {store.root}", file=sys.stderr)
        return 0
    print(f"{'version':<32}{'current':>8}  {'created (UTC)':<26}{'macro-AP':>9}{'prior':>7}{'train':>7}{'val':>6}  parent")
    for lineage in lineages:
        current = store.current_version(lineage)
        for manifest in store.versions(lineage):
            metrics = manifest.metrics
            print(
                f"{manifest.version:<32}{'*' if manifest.version == current else '':>8}  {manifest.created_at:<26}"
                f"{metrics.get('macro_ap') or 0:>9.4f}{metrics.get('prior_macro_ap') or 0:>7.3f}"
                f"{manifest.counts.get('train', 0):>7}{manifest.counts.get('validation', 0):>6}  {manifest.parent or '-'}"
            )
    return 0


def cmd_models_show(args, settings: Settings) -> int:
    from model.metrics import format_report

    store = ModelStore(settings.model_dir)
    manifest = store.manifest(args.version)
    if args.json:
        print(manifest.to_json())
        return 0
    lineage = manifest.lineage
    print(f"version      {manifest.version}{'  (current)' if store.current_version(lineage) == manifest.version else ''}")
    print(f"lineage      {lineage}")
    print(f"parent       {manifest.parent or '-'}")
    print(f"created      {manifest.created_at}")
    print(f"network      {manifest.architecture}, input {manifest.input['height']}x{manifest.input['width']} {manifest.input['colour']}")
    print(f"trained      {manifest.counts.get('train')} images, validated on {manifest.counts.get('validation')}, "
          f"{manifest.training.get('epochs_run')} epochs ({manifest.training.get('start')})")
    print(f"directory    {store.version_dir(manifest.version)}")
    print(format_report(manifest.metrics))
    return 0


def cmd_models_rollback(args, settings: Settings) -> int:
    store = ModelStore(settings.model_dir)
    previous = store.rollback(args.version)
    print(f"{store.manifest(args.version).lineage} now serves {args.version} (was {previous or 'nothing'})")
    return 0


# -- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thumbnail-ml",
        description="Pre-label YouTube thumbnails for Label Studio and train the model from annotations.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_project(sub):
        sub.add_argument("--project", type=int, metavar="ID",
                         help="Label Studio project id: use that project's model lineage (default: the offline lineage)")

    sub = commands.add_parser("label-config", help="print the default labeling config (ten thumbnail classes)")
    sub.set_defaults(handler=cmd_label_config)

    sub = commands.add_parser("train", help="train a model version from a Label Studio export and a folder of images")
    sub.add_argument("--export", required=True, type=Path, help="Label Studio export file: JSON, JSON-MIN or CSV")
    sub.add_argument("--images", required=True, type=Path, help="folder with the tasks' image files (searched recursively)")
    sub.add_argument("--label-config", type=Path, help="labeling config XML (default: LABEL_CONFIG or the shipped config)")
    add_project(sub)
    sub.add_argument("--architecture", default="shallownet3-separable",
                     choices=["shallownet", "shallownet2", "shallownet3", "shallownet3-separable"],
                     help="network of the ShallowNet family (default: shallownet3-separable)")
    sub.add_argument("--input-size", default="126x224", help="network input as HEIGHTxWIDTH pixels (default: 126x224)")
    sub.add_argument("--grayscale", action="store_true", help="train on grayscale instead of RGB")
    sub.add_argument("--epochs", type=int, default=60, help="maximum epochs; early stopping usually ends sooner (default: 60)")
    sub.add_argument("--patience", type=int, default=15, help="epochs without a better validation macro-AP before stopping (default: 15)")
    sub.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    sub.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    sub.add_argument("--from-scratch", action="store_true", help="do not start from the lineage's current version")
    sub.add_argument("--check", action="store_true", help="read the export and images, print the report, train nothing")
    sub.set_defaults(handler=cmd_train)

    sub = commands.add_parser("evaluate", help="report a model version's metrics on a labelled export")
    sub.add_argument("--export", required=True, type=Path, help="Label Studio export file: JSON, JSON-MIN or CSV")
    sub.add_argument("--images", required=True, type=Path, help="folder with the tasks' image files")
    sub.add_argument("--label-config", type=Path, help="labeling config XML (default: LABEL_CONFIG or the shipped config)")
    sub.add_argument("--model-version", help="version to evaluate (default: the lineage's current version)")
    sub.add_argument("--validation-only", action="store_true", help="evaluate only the tasks of the validation split")
    add_project(sub)
    sub.set_defaults(handler=cmd_evaluate)

    sub = commands.add_parser("predict", help="predict images and print one JSON object per image")
    sub.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    sub.add_argument("--model-version", help="version to use (default: the lineage's current version)")
    sub.add_argument("--batch-size", type=int, default=32, help="images per inference batch (default: 32)")
    add_project(sub)
    sub.set_defaults(handler=cmd_predict)

    sub = commands.add_parser("serve", help="start the ML backend server for Label Studio (gunicorn)")
    sub.add_argument("--host", help="address to listen on (default: HOST or 127.0.0.1)")
    sub.add_argument("--port", type=int, help="port to listen on (default: PORT or 9090)")
    sub.add_argument("--workers", type=int, help="serving processes (default: WORKERS or 1)")
    sub.add_argument("--threads", type=int, help="threads per process (default: THREADS or 2)")
    sub.set_defaults(handler=cmd_serve)

    sub = commands.add_parser("run", help="start Redis (if needed), the server and a training worker")
    sub.set_defaults(handler=cmd_run)

    sub = commands.add_parser("worker", help="run a training worker on the Redis queue (REDIS_URL)")
    sub.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    sub.add_argument("--name", help="worker name (default: thumbnail-ml-<host>-<pid>)")
    sub.set_defaults(handler=cmd_worker)

    sub = commands.add_parser("jobs", help="show the training queue and recent training jobs")
    sub.add_argument("--limit", type=int, default=20, help="most recent jobs to show (default: 20)")
    sub.add_argument("--json", action="store_true", help="print as JSON")
    sub.set_defaults(handler=cmd_jobs)

    from thumbnail_ml.commands import register_all

    register_all(commands)

    models = commands.add_parser("models", help="list, show and roll back model versions")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    sub = model_commands.add_parser("list", help="list versions, marking the current one of each lineage")
    sub.add_argument("--lineage", help=f"only this lineage ('{DEFAULT_LINEAGE}' or 'project-<id>')")
    sub.set_defaults(handler=cmd_models_list)
    sub = model_commands.add_parser("show", help="show a version's manifest and validation metrics")
    sub.add_argument("version")
    sub.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    sub.set_defaults(handler=cmd_models_show)
    sub = model_commands.add_parser("rollback", help="make an older version the current one of its lineage")
    sub.add_argument("version")
    sub.set_defaults(handler=cmd_models_rollback)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"thumbnail-ml: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        return args.handler(args, settings)
    except (CommandError, StoreError, LabelConfigError, ValueError, OSError) as error:
        message = str(error) if not isinstance(error, OSError) or not error.filename else f"{error.filename}: {error.strerror}"
        print(f"thumbnail-ml: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("thumbnail-ml: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
