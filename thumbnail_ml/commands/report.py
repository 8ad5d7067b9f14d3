"""``thumbnail-ml report``: a model version's per-class validation report, in the terminal or as HTML."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from model.store import ModelStore, lineage_for_project
from thumbnail_ml.cli import CommandError, no_model_error
from thumbnail_ml.files import atomic_file
from thumbnail_ml.settings import Settings

logger = logging.getLogger(__name__)


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``."""
    if not path.parent.is_dir():
        raise CommandError(f"output directory {path.parent} does not exist: create it first")
    with atomic_file(path) as handle:
        handle.write(text.encode("utf-8"))


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    """Print the report of a version and, with ``--html``, write it as a page."""
    # Imported here because only this command needs matplotlib.
    from model.report import format_text, load_report, render_html

    store = ModelStore(settings.model_dir)
    version = args.version
    if version is None:
        lineage = lineage_for_project(args.project)
        version = store.resolve(lineage)
        if version is None:
            raise no_model_error(store, lineage)
    print(format_text(load_report(store, version)))
    if args.html is not None:
        if args.html.is_dir():
            raise CommandError(f"--html {args.html} is a directory: give a file name, for example "
                               f"{args.html}/{version}.html")
        _write_atomically(args.html, render_html(store, version))
        print(f"wrote the report page of {version} to {args.html}", file=sys.stderr)
    return 0


def register(commands) -> None:
    """Add the ``report`` subcommand to the ``thumbnail-ml`` parser."""
    sub = commands.add_parser(
        "report",
        help="show a model version's per-class validation report and the change from its parent",
        description=(
            "Print a version's per-class validation metrics, sorted by average precision and rated "
            "good, fair or weak, and the comparison with its parent version. With --html, also write "
            "one self-contained page with the precision-recall curves, the decision counts per class "
            "and the training curve."
        ),
    )
    sub.add_argument("--version", help="model version id (default: the version serving the lineage)")
    sub.add_argument("--project", type=int, metavar="ID",
                     help="Label Studio project id: report the version serving that project's lineage "
                          "(default: the offline lineage)")
    sub.add_argument("--html", type=Path, metavar="OUT", help="also write the report as an HTML page to this file")
    sub.set_defaults(handler=cmd_report)
