"""``thumbnail-ml export``: write a Label Studio project's export to a file through the SDK."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from thumbnail_ml.cli import CommandError
from thumbnail_ml.settings import Settings

logger = logging.getLogger(__name__)

# The same values as training.export's EXPORT_TYPES keys and DEFAULT_TIMEOUT_S, repeated here
# because importing training.export loads label-studio-sdk (about 1 s), and every command
# builds this parser.
FORMATS = ("json", "json-min", "csv")
DEFAULT_TIMEOUT_S = 600.0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid project id {text!r}: expected a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid project id {text!r}: expected a positive integer")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: expected a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: expected a number of seconds above 0")
    return value


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """Export the project and print a one-line summary on stderr."""
    # Imported here so that other commands do not pay for label-studio-sdk's import.
    from training.export import ProjectExportError, export_project
    from training.label_studio import make_client

    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise CommandError(
            "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set to export a project: the URL of your "
            "Label Studio (for example http://localhost:8080) and a personal access token from "
            "Account & Settings (or a legacy token)"
        )
    client = make_client(settings)
    try:
        summary = export_project(
            client, args.project, args.out, export_format=args.format, with_predictions=args.with_predictions,
            all_tasks=args.all_tasks, timeout_s=args.timeout,
        )
    except ProjectExportError as error:
        raise CommandError(f"{error} (Label Studio at {settings.label_studio_url})") from error
    print(summary.describe(), file=sys.stderr)
    return 0


def register(commands) -> None:
    """Add the ``export`` subcommand to the ``thumbnail-ml`` parser."""
    sub = commands.add_parser(
        "export",
        help="export a Label Studio project to a JSON, JSON-MIN or CSV file (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY)",
        description=(
            "Export a project through Label Studio's export snapshots. Without --with-predictions the file "
            "contains what Label Studio's own export of that format contains, and 'thumbnail-ml train --export' "
            "reads every format. With --with-predictions, "
            "JSON keeps Label Studio's prediction objects; JSON-MIN and CSV get the latest prediction of "
            "each task as the extra fields prediction, prediction_score and prediction_model_version."
        ),
    )
    sub.add_argument("--project", required=True, type=_positive_int, metavar="ID", help="Label Studio project id")
    sub.add_argument("--format", choices=FORMATS, default="json",
                     help="export format (default: json)")
    sub.add_argument("--with-predictions", action="store_true",
                     help="include predictions with their scores and model versions")
    sub.add_argument("--all-tasks", action="store_true",
                     help="include tasks without annotations (default: only tasks with at least one annotation)")
    sub.add_argument("--timeout", type=_positive_seconds, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                     help=f"seconds to wait for Label Studio to build the export (default: {DEFAULT_TIMEOUT_S:.0f})")
    sub.add_argument("out", type=Path, metavar="OUT", help="file to write; replaced only once the export is complete")
    sub.set_defaults(handler=cmd_export)
