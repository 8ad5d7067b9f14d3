"""``thumbnail-ml preannotate`` and ``thumbnail-ml next``: pre-annotate a project, list what to label first."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from contextlib import nullcontext
from typing import ContextManager

from thumbnail_ml.cli import CommandError
from thumbnail_ml.settings import Settings

logger = logging.getLogger(__name__)

# A foreground run checks Redis only for the project lock, so an absent Redis costs little time.
REDIS_PROBE_TIMEOUT_S = 0.5


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {value}: expected at least 1")
    return value


def register(commands) -> None:
    """Add the ``preannotate`` and ``next`` subcommands."""
    sub = commands.add_parser(
        "preannotate",
        help="predict every task of a Label Studio project that has no prediction of the model version yet",
        description=(
            "Predict every task of a project that has no prediction of the model version yet, and write the "
            "predictions to Label Studio in chunks. Tasks that already have one are skipped, so an interrupted run "
            "continues where it stopped when you run it again. Prints the summary as JSON. Exit status 1 means "
            "that no task could be predicted, or that Label Studio created fewer predictions than it was sent."
        ),
    )
    sub.add_argument("--project", type=int, required=True, metavar="ID", help="Label Studio project id")
    sub.add_argument("--version", "--model-version", dest="model_version", metavar="VERSION",
                     help="model version to predict with (default: the version serving the project)")
    sub.add_argument("--only-unlabeled", action="store_true", help="only tasks without annotations")
    sub.add_argument("--limit", type=_positive_int, metavar="K",
                     help="predict at most K tasks in this run; running the command again continues")
    selection = sub.add_mutually_exclusive_group()
    selection.add_argument(
        "--select-version", dest="select_version", action="store_const", const=True, default=None,
        help="always make the project show and score predictions of this version (Settings > Model). By default "
             "this happens unless the project uses a connected ML backend's live predictions",
    )
    selection.add_argument("--keep-project-version", dest="select_version", action="store_const", const=False,
                           help="leave the project's choice of predictions to show as it is")
    sub.add_argument("--enqueue", action="store_true",
                     help="queue the run on the 'preannotate' RQ queue at REDIS_URL and print the job id")
    sub.set_defaults(handler=cmd_preannotate)

    sub = commands.add_parser(
        "next",
        help="list the unlabelled tasks to label first: lowest prediction score first",
        description=(
            "List the unlabelled tasks of a project whose latest prediction of the model version has the lowest "
            "score, so the model is least sure about them. Tasks without such a prediction follow, by id."
        ),
    )
    sub.add_argument("--project", type=int, required=True, metavar="ID", help="Label Studio project id")
    sub.add_argument("--count", type=_positive_int, default=10, metavar="K", help="tasks to list (default: 10)")
    sub.add_argument("--version", "--model-version", dest="model_version", metavar="VERSION",
                     help="model version whose scores are ranked (default: the version serving the project)")
    sub.add_argument("--json", action="store_true", help="print as JSON")
    sub.set_defaults(handler=cmd_next)


# -- preannotate ----------------------------------------------------------------------------


def _quiet_request_logs() -> None:
    """Log httpx's per-request lines only at LOG_LEVEL=DEBUG, because at INFO they break up the progress bar."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)


def cmd_preannotate(args, settings: Settings) -> int:
    from training.preannotate import PreannotateError, preannotate

    if args.enqueue:
        return _enqueue(args, settings)

    _quiet_request_logs()
    bar = _ProgressBar(args.project)
    try:
        with _project_lock(settings, args.project), bar.redirect_logging():
            summary = preannotate(
                settings, args.project, version=args.model_version, only_unlabeled=args.only_unlabeled,
                limit=args.limit, progress=bar.update, select_version=args.select_version,
            )
    except PreannotateError as error:
        raise CommandError(str(error)) from error
    except KeyboardInterrupt:
        print("thumbnail-ml: predictions written so far are kept in Label Studio, so running the same command "
              "again continues from there", file=sys.stderr)
        raise
    finally:
        bar.close()

    print(json.dumps(summary.to_dict(), indent=2))
    note = (summary.project_model_version or {}).get("note")
    if note:
        print(f"note: {note}", file=sys.stderr)
    attempted = summary.predicted + summary.failed_count
    if summary.gaps or (attempted and summary.predicted == 0):
        return 1
    return 0


def _enqueue(args, settings: Settings) -> int:
    from redis import Redis
    from redis.exceptions import RedisError

    from model.store import ModelStore
    from training.preannotate import PREANNOTATE_QUEUE, PreannotateError, enqueue_preannotation, resolve_model_version

    if args.select_version is not None:
        raise CommandError("--select-version and --keep-project-version apply to runs in the foreground only. A "
                           "queued run selects the version unless the project uses an ML backend's live predictions")
    if args.model_version:
        try:
            resolve_model_version(ModelStore(settings.model_dir), args.project, args.model_version)
        except PreannotateError as error:
            raise CommandError(str(error)) from error

    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        queued = enqueue_preannotation(redis, args.project, version=args.model_version,
                                       only_unlabeled=args.only_unlabeled, limit=args.limit, reason="command line")
    except RedisError as error:
        raise CommandError(f"cannot reach Redis at REDIS_URL ({type(error).__name__}), so nothing was queued: start "
                           "redis-server or set REDIS_URL") from error
    if queued.coalesced:
        print(f"an identical pre-annotation of project {args.project} is already waiting: job {queued.job_id}",
              file=sys.stderr)
    print(f"a worker listening on the '{PREANNOTATE_QUEUE}' queue runs it; 'thumbnail-ml jobs' does not list it yet",
          file=sys.stderr)
    print(queued.job_id)
    return 0


def _project_lock(settings: Settings, project_id: int) -> ContextManager[None]:
    """Hold the project's pre-annotation lock when Redis is reachable, so queued jobs wait for this run.

    Raises:
        CommandError: another run of the project holds the lock.
    """
    from redis import Redis
    from redis.exceptions import RedisError

    from training.preannotate import ProjectBusy, preannotation_lock

    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=REDIS_PROBE_TIMEOUT_S,
                           socket_timeout=REDIS_PROBE_TIMEOUT_S)
    try:
        redis.ping()
    except RedisError as error:
        logger.info("Redis at REDIS_URL is not reachable (%s): running without the project lock, so do not start "
                    "a second pre-annotation of project %s until this one ends", type(error).__name__, project_id)
        return nullcontext()
    lock = preannotation_lock(redis, project_id, "a thumbnail-ml preannotate command", wait_s=0)
    return _LockOrBusy(lock, ProjectBusy)


class _LockOrBusy:
    """Enter a lock context and turn its ``ProjectBusy`` into a ``CommandError``."""

    def __init__(self, lock: ContextManager[None], busy: type[Exception]) -> None:
        self._lock = lock
        self._busy = busy

    def __enter__(self) -> None:
        try:
            self._lock.__enter__()
        except self._busy as error:
            raise CommandError(str(error)) from error

    def __exit__(self, *exc_info) -> bool | None:
        return self._lock.__exit__(*exc_info)


class _ProgressBar:
    """A tqdm bar on stderr: tasks done of total, tasks predicted per second, and time left."""

    def __init__(self, project_id: int) -> None:
        self._project_id = project_id
        self._bar = None

    def _open(self):
        from tqdm import tqdm

        # Opened at the first event, so an error before the run starts prints no empty bar.
        self._bar = tqdm(
            total=None, unit="task", desc=f"project {self._project_id}", file=sys.stderr, dynamic_ncols=True,
            # tqdm's own rate counts skipped tasks too, so the run's own rate and estimate are shown.
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} tasks [{elapsed}{postfix}]",
        )
        return self._bar

    def redirect_logging(self) -> ContextManager[None]:
        from tqdm.contrib.logging import logging_redirect_tqdm

        return logging_redirect_tqdm()

    def update(self, event: dict) -> None:
        bar = self._bar or self._open()
        if event.get("total") is not None and event["total"] != bar.total:
            bar.total = event["total"]
        eta = event.get("eta")
        left = _format_seconds(eta) if eta is not None else "?"
        bar.set_postfix_str(f"{event.get('rate', 0):.1f} tasks/s, {left} left, {event.get('failed', 0)} failed",
                            refresh=False)
        bar.update(max(0, event.get("done", 0) - bar.n))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


# -- next -----------------------------------------------------------------------------------


def format_uncertain_rows(tasks) -> list[str]:
    """Return the table that ``next`` prints: a header, then task id, score and link per task."""
    rows = [f"{'task':>10}  {'score':>9}  link"]
    for task in tasks:
        # Three significant digits: scores near the decision thresholds are often below 0.001,
        # and a fixed number of decimals would print them all as zero.
        score = f"{task.score:.3g}" if task.score is not None else "-"
        rows.append(f"{task.task_id:>10}  {score:>9}  {task.link or '-'}")
    return rows


def cmd_next(args, settings: Settings) -> int:
    from training.preannotate import PreannotateError, next_uncertain

    _quiet_request_logs()
    try:
        queue = next_uncertain(settings, args.project, args.count, version=args.model_version)
    except PreannotateError as error:
        raise CommandError(str(error)) from error

    if args.json:
        print(json.dumps(queue.to_dict(), indent=2))
        return 0
    print("\n".join(format_uncertain_rows(queue.tasks)))
    print(f"{len(queue.tasks)} of {queue.unlabelled} unlabelled tasks of project {queue.project} listed, by the "
          f"score of {queue.model_version}", file=sys.stderr)
    if queue.without_prediction:
        count = queue.without_prediction
        subject = "1 unlabelled task has" if count == 1 else f"{count} unlabelled tasks have"
        print(f"{subject} no prediction of {queue.model_version}, so they are listed last: run "
              f"'thumbnail-ml preannotate --project {queue.project} --only-unlabeled'", file=sys.stderr)
    return 0
