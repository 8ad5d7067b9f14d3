"""Validation report of a model version: per-class metrics, plots and the change from its parent.

``write_report`` runs at training time, while the validation labels and the serving export's
probabilities are at hand, and writes ``report/`` into the version's staging directory, so
the report is published with the version. ``load_report``, ``format_text`` and
``render_html`` read it back for the ``thumbnail-ml report`` command. Versions published
without a report directory get the parts that their manifest alone allows: the metrics table,
the parent comparison and the training curve.

Plots use matplotlib's ``Figure`` with the Agg canvas and never pyplot, so no GUI backend is
loaded and a training worker's threads share no global figure state.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from model.manifest import Manifest
from model.metrics import evaluate, precision_recall_points
from model.store import ModelStore, StoreError, VersionNotFound

logger = logging.getLogger(__name__)

REPORT_DIR = "report"
REPORT_FILE = "report.json"
PR_CURVES_FILE = "pr_curves.png"
CONFUSION_FILE = "confusion.png"
TRAINING_CURVE_FILE = "training_curve.png"
PLOT_FILES = (PR_CURVES_FILE, CONFUSION_FILE, TRAINING_CURVE_FILE)
REPORT_SCHEMA = 1
DPI = 100

# Rating bands for readers of the report, a judgment call for this task and not a standard
# scale. AP is precision averaged over recall levels, so at 0.8 about four in five chosen
# images are right on average, and below 0.5 most are wrong.
GOOD_AP = 0.8
WEAK_AP = 0.5
# With fewer validation positives than this, a class's AP changes a lot between splits.
FEW_POSITIVES = 10
# Per-class AP changes smaller than this are shown as unchanged.
CHANGE_TOLERANCE = 0.01

PARENT_NOTE = (
    "The parent's numbers come from its manifest and were measured on its own validation split. "
    "The split rule is the same, but tasks added since then change the split, so per-class changes "
    "are indicative. Where the trainer scored the parent on this version's split, that macro-AP is "
    "shown too."
)
THRESHOLD_NOTE = (
    "Thresholds were tuned on the validation split, so precision, recall and F1 at them are "
    "optimistic. AP does not depend on a threshold."
)


@dataclass
class VersionReport:
    """A version's report as shown by ``thumbnail-ml report``.

    Attributes:
        manifest: the version's manifest.
        data: the content of ``report.json``, or the same keys built from the manifest.
        current: whether the version is the current one of its lineage.
        plots: plot file name -> PNG bytes, for the plots that are available.
        notes: what is missing or approximate, one sentence each.
    """

    manifest: Manifest
    data: dict
    current: bool
    plots: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- numbers ---------------------------------------------------------------------------------


def precision_recall_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Return (recall, precision) at every distinct score, or None when there is no positive.

    The points are those that ``model.metrics.average_precision`` sums over, with a first
    point at recall 0. Drawn as steps with ``where="pre"``, the area under the curve is the AP.
    """
    points = precision_recall_points(labels, scores)
    if points is None:
        return None
    recall, precision = points
    return np.r_[0.0, recall], np.r_[precision[0], precision]


def confusion_counts(labels: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray) -> list[dict]:
    """Return per class the TP, FP, FN and TN counts of the decision ``probability >= threshold``."""
    labels = np.asarray(labels, dtype=bool)
    predicted = np.asarray(probabilities, dtype=np.float64) >= np.asarray(thresholds, dtype=np.float64)
    counts = []
    for column in range(labels.shape[1]):
        truth, decision = labels[:, column], predicted[:, column]
        counts.append({
            "tp": int(np.sum(truth & decision)),
            "fp": int(np.sum(~truth & decision)),
            "fn": int(np.sum(truth & ~decision)),
            "tn": int(np.sum(~truth & ~decision)),
        })
    return counts


def rate_class(average_precision: float | None) -> str:
    """Return ``good``, ``fair``, ``weak``, or ``n/a`` when the AP is undefined (no positive example)."""
    if average_precision is None:
        return "n/a"
    if average_precision >= GOOD_AP:
        return "good"
    if average_precision >= WEAK_AP:
        return "fair"
    return "weak"


def _change(new: float | None, old: float | None) -> float | None:
    return None if new is None or old is None else round(new - old, 4)


def _trend(change: float | None) -> str:
    if change is None:
        return "n/a"
    if change >= CHANGE_TOLERANCE:
        return "better"
    if change <= -CHANGE_TOLERANCE:
        return "worse"
    return "unchanged"


def compare_with_parent(metrics: dict, parent: Manifest, same_split_parent_macro_ap: float | None = None) -> dict:
    """Compare ``evaluate``-style metrics with those in the parent's manifest, class by class."""
    parent_rows = {row["name"]: row for row in parent.metrics.get("classes", [])}
    classes = []
    for row in metrics["classes"]:
        old = parent_rows.get(row["name"], {})
        change = _change(row["average_precision"], old.get("average_precision"))
        classes.append({
            "name": row["name"],
            "average_precision": row["average_precision"],
            "parent_average_precision": old.get("average_precision"),
            "change": change,
            "trend": _trend(change),
            "f1": row["f1"],
            "parent_f1": old.get("f1"),
        })
    names = {row["name"] for row in metrics["classes"]}
    macro_change = _change(metrics.get("macro_ap"), parent.metrics.get("macro_ap"))
    return {
        "version": parent.version,
        "created_at": parent.created_at,
        "macro_ap": metrics.get("macro_ap"),
        "parent_macro_ap": parent.metrics.get("macro_ap"),
        "macro_ap_change": macro_change,
        "trend": _trend(macro_change),
        "same_split_parent_macro_ap": same_split_parent_macro_ap,
        "parent_validation_count": parent.counts.get("validation"),
        "classes": classes,
        "classes_only_in_parent": [name for name in parent_rows if name not in names],
        "note": PARENT_NOTE,
    }


def build_report_data(manifest: Manifest, metrics: dict, confusion: list[dict] | None,
                      parent: Manifest | None, plots: list[str]) -> dict:
    """Assemble the content of ``report.json`` (also used for versions without one).

    Args:
        manifest: the version's manifest; ``version`` may still be empty before publishing.
        metrics: ``model.metrics.evaluate``'s result on the validation split.
        confusion: per-class counts from ``confusion_counts``, or None when unknown.
        parent: the parent version's manifest, or None.
        plots: the plot file names written beside ``report.json``.
    """
    classes = []
    for index, row in enumerate(metrics["classes"]):
        counts = confusion[index] if confusion is not None else {"tp": None, "fp": None, "fn": None, "tn": None}
        ap, prior = row["average_precision"], row["prior_average_precision"]
        classes.append({**row, **counts, "rating": rate_class(ap),
                        "few_positives": 0 < row["support"] < FEW_POSITIVES,
                        "below_prior": ap is not None and prior is not None and ap <= prior})
    same_split = manifest.training.get("parent_macro_ap")
    return {
        "schema": REPORT_SCHEMA,
        "version": manifest.version or None,
        "parent": manifest.parent,
        "validation_count": metrics.get("count"),
        "train_count": manifest.counts.get("train"),
        "macro_ap": metrics.get("macro_ap"),
        "prior_macro_ap": metrics.get("prior_macro_ap"),
        "classes": classes,
        "parent_comparison": compare_with_parent(metrics, parent, same_split) if parent is not None else None,
        "plots": list(plots),
        "threshold_note": THRESHOLD_NOTE,
    }


# -- plots -----------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # Without the Software key, the same figure gives the same bytes on every matplotlib version.
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _format_ap(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def plot_pr_curves(labels: np.ndarray, probabilities: np.ndarray, metrics: dict) -> Figure:
    """Draw one precision-recall panel per class, with the AP in each title.

    Each panel also shows the prior baseline (the class's positive rate, dashed) and the
    operating point at the tuned threshold (a dot).
    """
    rows = metrics["classes"]
    columns = min(4, len(rows))
    lines = math.ceil(len(rows) / columns)
    figure = _new_figure(2.9 * columns, 2.5 * lines + 0.4)
    axes = figure.subplots(lines, columns, squeeze=False, sharex=True, sharey=True)
    for index, axis in enumerate(axes.flat):
        if index >= len(rows):
            axis.set_visible(False)
            continue
        row = rows[index]
        curve = precision_recall_curve(labels[:, index], probabilities[:, index])
        positives = f"{row['support']} positive" + ("" if row["support"] == 1 else "s")
        axis.set_title(f"{row['name']}\nAP {_format_ap(row['average_precision'])}, {positives}", fontsize=9)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
        if curve is None:
            axis.text(0.5, 0.5, "no positive example\nin validation", ha="center", va="center", fontsize=8,
                      color="0.4", transform=axis.transAxes)
        else:
            recall, precision = curve
            axis.step(recall, precision, where="pre", color="tab:blue", linewidth=1.4)
            axis.axhline(row["support"] / max(metrics["count"], 1), color="0.5", linestyle="--", linewidth=0.9)
            if row["precision"] or row["recall"]:
                axis.plot([row["recall"]], [row["precision"]], "o", color="tab:red", markersize=4)
        if index % columns == 0:
            axis.set_ylabel("precision", fontsize=8)
        if index >= len(rows) - columns:
            axis.set_xlabel("recall", fontsize=8)
            axis.tick_params(labelbottom=True)
        axis.tick_params(labelsize=7)
    figure.suptitle(f"Precision-recall on {metrics['count']} validation images "
                    "(dashed: prior baseline, dot: tuned threshold)", fontsize=10)
    return figure


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def plot_confusion(names: list[str], counts: list[dict], thresholds: list[float]) -> Figure:
    """Draw the per-class TP, FN, FP and TN counts at the tuned thresholds as a heat table.

    A labels-by-labels confusion matrix does not exist for multi-label data, because one
    image can belong to several classes, and a co-occurrence matrix mixes classes that
    appear together with errors. These four counts show per class what a reader wants to
    know first: how many positives the model misses and how many of its choices are wrong.
    Colours are rates, so rare and common classes compare. TP and FN are shares of the
    positives (recall and miss rate), FP is the share of chosen images that are wrong
    (1 - precision), and TN is the share of negatives left unchosen. Green cells are right
    decisions, red cells wrong ones.
    """
    columns = ("TP", "FN", "FP", "TN")
    colour_maps = (colormaps["Greens"], colormaps["Reds"], colormaps["Reds"], colormaps["Greens"])
    image = np.ones((len(names), len(columns), 4))
    figure = _new_figure(6.4, 0.42 * len(names) + 1.3)
    axis = figure.subplots()
    for row_index, row in enumerate(counts):
        rates = (
            _rate(row["tp"], row["tp"] + row["fn"]),
            _rate(row["fn"], row["tp"] + row["fn"]),
            _rate(row["fp"], row["tp"] + row["fp"]),
            _rate(row["tn"], row["tn"] + row["fp"]),
        )
        values = (row["tp"], row["fn"], row["fp"], row["tn"])
        for column_index, (rate, value) in enumerate(zip(rates, values)):
            if rate is None:
                # Grey: the rate is undefined, for example recall of a class without positives.
                image[row_index, column_index] = (0.92, 0.92, 0.92, 1.0)
                label, shade = f"{value}", 0.0
            else:
                shade = 0.1 + 0.75 * rate
                image[row_index, column_index] = colour_maps[column_index](shade)
                label = f"{value}  ({rate:.0%})"
            axis.text(column_index, row_index, label, ha="center", va="center", fontsize=8,
                      color="white" if shade > 0.6 else "black")
    axis.imshow(image, aspect="auto")
    axis.set_xticks(range(len(columns)), columns, fontsize=9)
    axis.xaxis.tick_top()
    axis.set_yticks(range(len(names)), [f"{name}  (t={threshold:.2f})" for name, threshold in zip(names, thresholds)],
                    fontsize=8)
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    axis.set_title("Decisions at the tuned threshold t\nTP and FN: share of positives, FP: share of chosen, "
                   "TN: share of negatives", fontsize=8, pad=24)
    return figure


def plot_training_curve(history: list[dict]) -> Figure:
    """Draw the training loss and the validation macro-AP per epoch, marking the kept epoch."""
    figure = _new_figure(6.4, 3.4)
    axis = figure.subplots()
    if not history:
        axis.text(0.5, 0.5, "no training history in the manifest", ha="center", va="center",
                  transform=axis.transAxes, color="0.4")
        axis.set_axis_off()
        return figure
    epochs = [entry["epoch"] for entry in history]
    loss = [entry.get("loss", float("nan")) for entry in history]
    macro_ap = [entry.get("val_macro_ap", float("nan")) for entry in history]
    # Markers keep a single-epoch history visible, where a line would have no length.
    axis.plot(epochs, loss, "o-", color="tab:orange", markersize=3, label="training loss")
    axis.set_xlabel("epoch")
    axis.set_ylabel("training loss", color="tab:orange")
    axis.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    axis.xaxis.get_major_locator().set_params(integer=True)
    second = axis.twinx()
    second.plot(epochs, macro_ap, "s-", color="tab:blue", markersize=3, label="validation macro-AP")
    second.set_ylabel("validation macro-AP", color="tab:blue")
    best = max(history, key=lambda entry: entry.get("val_macro_ap", float("-inf")))
    second.axvline(best["epoch"], color="0.5", linestyle=":", linewidth=1)
    axis.set_title(f"Training: best validation macro-AP {best.get('val_macro_ap', float('nan')):.3f} "
                   f"at epoch {best['epoch']} of {len(history)} (weights kept from that epoch)", fontsize=9)
    axis.grid(alpha=0.3)
    return figure


# -- writing at training time ----------------------------------------------------------------


def _write_durably(path: Path, content: bytes) -> None:
    # ModelStore.publish fsyncs only the files at the top of the version directory.
    with open(path, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _check_inputs(manifest: Manifest, labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Raise ValueError unless the arrays and thresholds fit the manifest; returns the thresholds."""
    expected = len(manifest.classes)
    if labels.ndim != 2 or labels.shape[1] != expected:
        raise ValueError(f"labels have shape {labels.shape}, expected (images, {expected}) "
                         f"for the classes {manifest.classes}")
    if probabilities.shape != labels.shape:
        raise ValueError(f"probabilities have shape {probabilities.shape}, expected the labels' shape {labels.shape}")
    if labels.shape[0] == 0:
        raise ValueError("no validation images: a report needs at least one labelled image")
    missing = [name for name in manifest.classes if name not in manifest.thresholds]
    if missing:
        raise ValueError(f"the manifest has no threshold for {missing}: set manifest.thresholds before the report")
    return np.array([manifest.thresholds[name] for name in manifest.classes], dtype=np.float64)


def write_report(directory: Path, manifest: Manifest, labels: np.ndarray, probabilities: np.ndarray,
                 parent: Manifest | None) -> list[str]:
    """Write the validation report into ``directory/report/`` and return the file names written.

    Args:
        directory: the version's directory, usually its staging directory before publishing.
        manifest: the new version's manifest, with classes, thresholds and training history.
        labels: validation labels, boolean (images, classes) in ``manifest.classes`` order.
        probabilities: the serving export's probabilities on the same images, same shape.
        parent: the parent version's manifest, or None.

    Raises:
        ValueError: the arrays do not match the manifest's classes or are empty.
    """
    labels = np.asarray(labels, dtype=bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    thresholds = _check_inputs(manifest, labels, probabilities)
    report_dir = Path(directory) / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)

    metrics = evaluate(labels, probabilities, manifest.classes, thresholds)
    counts = confusion_counts(labels, probabilities, thresholds)
    figures = {
        PR_CURVES_FILE: plot_pr_curves(labels, probabilities, metrics),
        CONFUSION_FILE: plot_confusion(list(manifest.classes), counts, thresholds.tolist()),
        TRAINING_CURVE_FILE: plot_training_curve(manifest.training.get("history") or []),
    }
    for name, figure in figures.items():
        _write_durably(report_dir / name, _png_bytes(figure))
    data = build_report_data(manifest, metrics, counts, parent, list(figures))
    _write_durably(report_dir / REPORT_FILE, json.dumps(data, indent=2).encode("utf-8"))
    directory_handle = os.open(report_dir, os.O_RDONLY)
    try:
        os.fsync(directory_handle)
    finally:
        os.close(directory_handle)
    written = [*figures, REPORT_FILE]
    logger.info("wrote the validation report (%s) to %s", ", ".join(written), report_dir)
    return written


# -- reading back ----------------------------------------------------------------------------


def load_report(store: ModelStore, version: str) -> VersionReport:
    """Read a version's report, or build what its manifest allows when it has none.

    Raises:
        VersionNotFound: no such version in the store.
    """
    manifest = store.manifest(version)
    current = store.current_version(manifest.lineage) == version
    report_dir = store.version_dir(version) / REPORT_DIR
    report_file = report_dir / REPORT_FILE
    if report_file.is_file():
        data = json.loads(report_file.read_text("utf-8"))
        plots = {}
        notes = []
        for name in PLOT_FILES:
            path = report_dir / name
            if path.is_file():
                plots[name] = path.read_bytes()
            else:
                notes.append(f"The plot {name} is missing from {report_dir}.")
        return VersionReport(manifest, data, current, plots, notes)

    notes = [
        "This version has no report directory, so the precision-recall curves and the decision counts, "
        "which need the validation predictions, are missing. The table and the training curve come "
        "from the manifest."
    ]
    parent = None
    if manifest.parent:
        try:
            parent = store.manifest(manifest.parent)
        except VersionNotFound:
            notes.append(f"The parent {manifest.parent} is not in this store, so there is no comparison.")
    if not manifest.metrics.get("classes"):
        raise StoreError(f"model version {version!r} has no per-class metrics in its manifest, so there is nothing "
                         "to report: retrain it with 'thumbnail-ml train'")
    data = build_report_data(manifest, manifest.metrics, None, parent, [])
    plots = {TRAINING_CURVE_FILE: _png_bytes(plot_training_curve(manifest.training.get("history") or []))}
    return VersionReport(manifest, data, current, plots, notes)


def _sorted_by_ap(classes: list[dict]) -> list[dict]:
    # Undefined AP (no positive example) goes last.
    return sorted(classes, key=lambda row: (row["average_precision"] is None, -(row["average_precision"] or 0.0)))


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def format_text(report: VersionReport) -> str:
    """Format the report for the terminal: header, per-class table sorted by AP, parent comparison."""
    manifest, data = report.manifest, report.data
    state = f"current version of lineage {manifest.lineage}" if report.current else f"lineage {manifest.lineage}, not current"
    lines = [
        f"model version  {manifest.version} ({state})",
        f"parent         {manifest.parent or '-'}",
        f"created        {manifest.created_at}",
        f"images         {data.get('train_count')} training, {data.get('validation_count')} validation",
        f"macro-AP       {_number(data.get('macro_ap'))} (prior baseline {_number(data.get('prior_macro_ap'))})",
        "",
    ]

    comparison = data.get("parent_comparison")
    parent_rows = {row["name"]: row for row in comparison["classes"]} if comparison else {}
    header = f"{'class':<16}{'rating':<8}{'support':>8}{'AP':>7}{'prior':>7}{'prec':>7}{'recall':>7}{'F1':>7}{'thresh':>8}"
    if comparison:
        header += f"{'parent AP':>11}{'change':>8}"
    lines.append(header)
    for row in _sorted_by_ap(data["classes"]):
        rating = row["rating"]
        if row.get("below_prior"):
            rating += "!"
        if row.get("few_positives"):
            rating += "*"
        line = (f"{row['name']:<16}{rating:<8}{row['support']:>8}{_number(row['average_precision']):>7}"
                f"{_number(row['prior_average_precision']):>7}{row['precision']:>7.3f}{row['recall']:>7.3f}"
                f"{row['f1']:>7.3f}{row['threshold']:>8.3f}")
        if comparison:
            old = parent_rows.get(row["name"], {})
            line += f"{_number(old.get('parent_average_precision')):>11}{_signed(old.get('change')):>8}"
        lines.append(line)
    lines.append(f"ratings: good AP >= {GOOD_AP}, fair >= {WEAK_AP}, weak below; ! AP not above the prior "
                 f"baseline; * fewer than {FEW_POSITIVES} validation positives")

    if comparison:
        lines += [
            "",
            f"compared with parent {comparison['version']}: macro-AP {_number(comparison['parent_macro_ap'])} -> "
            f"{_number(comparison['macro_ap'])} ({_signed(comparison['macro_ap_change'])}, {comparison['trend']})",
        ]
        if comparison.get("same_split_parent_macro_ap") is not None:
            lines.append(f"parent on this version's validation split: macro-AP "
                         f"{_number(comparison['same_split_parent_macro_ap'])}")
        for trend in ("better", "worse"):
            names = [row["name"] for row in comparison["classes"] if row["trend"] == trend]
            lines.append(f"{trend}: {', '.join(names) if names else '-'}")
        if comparison["classes_only_in_parent"]:
            lines.append(f"only in the parent: {', '.join(comparison['classes_only_in_parent'])}")

    lines += ["", THRESHOLD_NOTE, *report.notes]
    return "\n".join(lines)


# -- HTML ------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.8em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1.2em; }
dt { color: #666; } dd { margin: 0; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
th { background: #f4f4f4; } td.name, th.name { text-align: left; }
.badge { display: inline-block; min-width: 3.2em; padding: 0.05em 0.5em; border-radius: 0.8em;
         font-size: 0.85em; font-weight: 600; text-align: center; }
.good { background: #d4edda; color: #155724; } .fair { background: #fff3cd; color: #6b5200; }
.weak { background: #f8d7da; color: #721c24; } .na { background: #e2e3e5; color: #444; }
.bar { display: inline-block; height: 0.7em; background: #4a7fc1; vertical-align: middle; margin-left: 0.4em; }
.better { color: #155724; } .worse { color: #a3212e; } .unchanged { color: #666; }
.glance { background: #f8f9fa; border: 1px solid #ddd; padding: 0.6em 1em; border-radius: 4px; }
.note { color: #555; font-size: 0.92em; } .missing { color: #a3212e; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0 1em; }
"""

_PLOT_TITLES = {
    PR_CURVES_FILE: "Precision-recall curves",
    CONFUSION_FILE: "Decisions at the tuned thresholds",
    TRAINING_CURVE_FILE: "Training curve",
}
_PLOT_CAPTIONS = {
    PR_CURVES_FILE: "One panel per class on the validation split. The area under each curve is its AP, the "
                    "dashed line is the prior baseline and the dot is the tuned threshold.",
    CONFUSION_FILE: "Per class: true positives (TP) and missed positives (FN) as shares of the positives, wrong "
                    "choices (FP) as a share of the chosen images, and true negatives (TN) as a share of the "
                    "negatives. Green cells are right decisions, red cells wrong ones; darker means a larger share.",
    TRAINING_CURVE_FILE: "Training loss and validation macro-AP per epoch; the dotted line marks the epoch "
                         "whose weights were kept.",
}


def _escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def _badge(rating: str) -> str:
    css = "na" if rating == "n/a" else rating
    return f'<span class="badge {css}">{_escape(rating)}</span>'


def _glance(classes: list[dict]) -> str:
    groups = {"good": [], "fair": [], "weak": [], "n/a": []}
    for row in _sorted_by_ap(classes):
        groups[row["rating"]].append(row["name"])
    labels = {"good": "Good at", "fair": "Fair at", "weak": "Weak at", "n/a": "No validation positive"}
    items = []
    for rating, names in groups.items():
        if names:
            items.append(f"<p>{_badge(rating)} <strong>{labels[rating]}:</strong> {_escape(', '.join(names))}</p>")
    return f'<div class="glance">{"".join(items)}</div>'


def _class_table(data: dict) -> str:
    comparison = data.get("parent_comparison")
    parent_rows = {row["name"]: row for row in comparison["classes"]} if comparison else {}
    has_counts = any(row.get("tp") is not None for row in data["classes"])
    head = ["<th class=name>class</th>", "<th>rating</th>", "<th>AP</th>", "<th>prior AP</th>",
            "<th>precision</th>", "<th>recall</th>", "<th>F1</th>", "<th>threshold</th>", "<th>support</th>"]
    if has_counts:
        head += ["<th>TP</th>", "<th>FN</th>", "<th>FP</th>"]
    if comparison:
        head += ["<th>parent AP</th>", "<th>change</th>"]
    rows = []
    for row in _sorted_by_ap(data["classes"]):
        ap = row["average_precision"]
        bar = "" if ap is None else f'<span class="bar" style="width:{ap * 60:.0f}px"></span>'
        few = ""
        if row.get("below_prior"):
            few += ' <span class="worse" title="AP is not above the prior baseline">(below prior)</span>'
        if row.get("few_positives"):
            few += ' <span class="note" title="AP on few positives varies between splits">(few)</span>'
        cells = [
            f"<td class=name>{_escape(row['name'])}</td>", f"<td>{_badge(row['rating'])}{few}</td>",
            f"<td>{_number(ap)}{bar}</td>", f"<td>{_number(row['prior_average_precision'])}</td>",
            f"<td>{row['precision']:.3f}</td>", f"<td>{row['recall']:.3f}</td>", f"<td>{row['f1']:.3f}</td>",
            f"<td>{row['threshold']:.3f}</td>", f"<td>{row['support']}</td>",
        ]
        if has_counts:
            cells += [f"<td>{row['tp']}</td>", f"<td>{row['fn']}</td>", f"<td>{row['fp']}</td>"]
        if comparison:
            old = parent_rows.get(row["name"], {})
            trend = old.get("trend", "n/a")
            css = trend if trend in ("better", "worse", "unchanged") else "unchanged"
            cells += [f"<td>{_number(old.get('parent_average_precision'))}</td>",
                      f'<td class="{css}">{_signed(old.get("change"))}</td>']
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _parent_section(manifest: Manifest, data: dict) -> str:
    comparison = data.get("parent_comparison")
    if not manifest.parent:
        return "<h2>Parent</h2><p>This version was trained without a parent version.</p>"
    if not comparison:
        return f"<h2>Parent</h2><p>Parent {_escape(manifest.parent)}: no comparison available.</p>"
    trend = comparison["trend"]
    parts = [
        f"<h2>Compared with parent {_escape(comparison['version'])}</h2>",
        f'<p>Macro-AP {_number(comparison["parent_macro_ap"])} &rarr; {_number(comparison["macro_ap"])} '
        f'(<span class="{trend if trend != "n/a" else "unchanged"}">{_signed(comparison["macro_ap_change"])}, '
        f"{_escape(trend)}</span>).",
    ]
    if comparison.get("same_split_parent_macro_ap") is not None:
        parts.append(f" On this version's validation split the parent scores "
                     f"{_number(comparison['same_split_parent_macro_ap'])}.")
    parts.append("</p>")
    for trend_name in ("better", "worse"):
        names = [row["name"] for row in comparison["classes"] if row["trend"] == trend_name]
        parts.append(f'<p><span class="{trend_name}">{trend_name.capitalize()}:</span> '
                     f"{_escape(', '.join(names)) if names else 'none'}</p>")
    if comparison["classes_only_in_parent"]:
        parts.append(f"<p>Only in the parent: {_escape(', '.join(comparison['classes_only_in_parent']))}</p>")
    parts.append(f'<p class="note">{_escape(comparison["note"])}</p>')
    return "".join(parts)


def _plots_section(report: VersionReport) -> str:
    parts = ["<h2>Plots</h2>"]
    for name in PLOT_FILES:
        title = _PLOT_TITLES[name]
        content = report.plots.get(name)
        if content is None:
            parts.append(f'<h3>{title}</h3><p class="missing">Missing: {_escape(name)} is not available for '
                         "this version.</p>")
            continue
        encoded = base64.b64encode(content).decode("ascii")
        parts.append(f'<h3>{title}</h3><p class="note">{_escape(_PLOT_CAPTIONS[name])}</p>'
                     f'<img alt="{_escape(title)}" src="data:image/png;base64,{encoded}">')
    return "".join(parts)


def render_html(store: ModelStore, version: str) -> str:
    """Return one self-contained HTML page (plots inlined as data URIs) describing a version.

    Raises:
        VersionNotFound: no such version in the store.
    """
    report = load_report(store, version)
    manifest, data = report.manifest, report.data
    state = "current version" if report.current else "not the current version"
    header = [
        ("Version", f"{manifest.version} ({state} of lineage {manifest.lineage})"),
        ("Parent", manifest.parent or "none"),
        ("Created (UTC)", manifest.created_at),
        ("Network", f"{manifest.architecture}, input {manifest.input.get('height')}x{manifest.input.get('width')} "
                    f"{manifest.input.get('colour', '')}"),
        ("Images", f"{data.get('train_count')} training, {data.get('validation_count')} validation"),
        ("Epochs", f"{manifest.training.get('epochs_run', 'n/a')} run, weights of epoch "
                   f"{manifest.training.get('best_epoch', 'n/a')} kept"),
        ("Macro-AP", f"{_number(data.get('macro_ap'))} (prior baseline {_number(data.get('prior_macro_ap'))})"),
    ]
    notes = "".join(f'<p class="missing">{_escape(note)}</p>' for note in report.notes)
    body = [
        f"<h1>Model report: {_escape(manifest.version)}</h1>",
        "<dl>" + "".join(f"<dt>{_escape(key)}</dt><dd>{_escape(value)}</dd>" for key, value in header) + "</dl>",
        notes,
        "<h2>At a glance</h2>",
        _glance(data["classes"]),
        "<h2>Per class, best first</h2>",
        _class_table(data),
        f'<p class="note">Ratings: good AP &ge; {GOOD_AP}, fair &ge; {WEAK_AP}, weak below; n/a: no positive '
        f"example in the validation split. (below prior): AP not above the prior baseline. "
        f"(few): fewer than {FEW_POSITIVES} validation positives. "
        f"{_escape(THRESHOLD_NOTE)}</p>",
        _parent_section(manifest, data),
        _plots_section(report),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Model report {_escape(manifest.version)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
