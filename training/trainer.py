"""Train, evaluate and publish a model version (imports TensorFlow).

The steps, each in its own function below:

1. split the dataset by task id into training and validation;
2. start from the parent version's weights when it has the same classes and input (warm
   start), else build the network from scratch;
3. fit with class-weighted binary cross-entropy, keeping the weights of the epoch with the
   best validation macro-AP and stopping when it has not improved for ``patience`` epochs;
4. tune one threshold per class on the validation split;
5. export to LiteRT and check that the export reproduces Keras to within 1e-5;
6. compare with the parent on the same validation split, write the validation report
   (plots and per-class figures) into the version, and publish if not worse.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np

from model import network
from model.export import check_agreement, export_litert, litert_predict
from model.manifest import Manifest
from model.metrics import evaluate, tune_thresholds
from model.report import write_report
from model.store import ModelStore, VersionNotFound
from training.dataset import Dataset, VALIDATION_FRACTION

import keras  # noqa: E402  (after model.network, which quiets TensorFlow's start-up logs)
import tensorflow as tf  # noqa: E402

logger = logging.getLogger(__name__)

# A validation split smaller than this cannot rank versions or tune thresholds.
MIN_VALIDATION = 5
MIN_TRAINING = 10
KERAS_FILE = "model.keras"
SERVING_FILE = "model.tflite"

ProgressCallback = Callable[[dict], None]


class TrainingError(RuntimeError):
    """Training cannot run on this data; the message gives the reason and the fix."""


@dataclass
class TrainingOptions:
    """Hyper-parameters of one training run.

    Attributes:
        architecture: network name, see ``model.network.ARCHITECTURES``.
        epochs: the maximum number of epochs; early stopping usually ends sooner.
        batch_size: images per gradient step.
        learning_rate: Adam's step size (lower it for warm starts, see ``warm_learning_rate``).
        warm_learning_rate: Adam's step size when continuing from a parent version.
        patience: epochs without a better validation macro-AP before stopping.
        warm_patience: ``patience`` when continuing from a parent version, which starts
            near its best and needs fewer epochs to show a plateau.
        seed: seed of weight initialisation, shuffling and augmentation.
        tolerance: how much lower than the parent's macro-AP a new version may score and
            still be published.
        from_scratch: ignore the parent's weights even when they fit.
    """

    architecture: str = network.DEFAULT_ARCHITECTURE
    epochs: int = 60
    batch_size: int = 32
    learning_rate: float = 3e-3
    warm_learning_rate: float = 1e-3
    patience: int = 15
    warm_patience: int = 8
    seed: int = 1
    tolerance: float = 0.01
    from_scratch: bool = False


@dataclass
class TrainingOutcome:
    """The result of a training run and whether it was published."""

    published: bool
    reason: str
    manifest: Manifest
    parent_macro_ap: float | None = None
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "published": self.published,
            "reason": self.reason,
            "version": self.manifest.version if self.published else None,
            "parent": self.manifest.parent,
            "macro_ap": self.manifest.metrics.get("macro_ap"),
            "prior_macro_ap": self.manifest.metrics.get("prior_macro_ap"),
            "parent_macro_ap": self.parent_macro_ap,
            "counts": self.manifest.counts,
        }


def _warm_start_model(store: ModelStore, parent: str | None, dataset: Dataset, options: TrainingOptions):
    """Load the parent's Keras model if it can continue on this data; else return (None, why)."""
    if parent is None:
        return None, "no parent version"
    if options.from_scratch:
        return None, "from scratch requested"
    manifest = store.manifest(parent)
    if manifest.classes != dataset.classes:
        return None, f"parent {parent} has other classes"
    if tuple(manifest.input.get(k) for k in ("height", "width", "channels")) != dataset.spec.shape:
        return None, f"parent {parent} has another input size"
    if manifest.architecture != options.architecture:
        return None, f"parent {parent} is a {manifest.architecture}, not a {options.architecture}"
    model = keras.models.load_model(store.version_dir(parent) / KERAS_FILE, compile=False)
    return model, f"warm start from {parent}"


def _augment(pixels, labels):
    # Thumbnails are composed for the viewer, but a mirrored thumbnail is still the same
    # kind of thumbnail; brightness jitter covers the range of YouTube's encoders.
    pixels = tf.cast(pixels, tf.float32)
    pixels = tf.image.random_flip_left_right(pixels)
    pixels = tf.clip_by_value(pixels * tf.random.uniform([], 0.85, 1.15), 0.0, 255.0)
    return pixels, labels


def _training_data(train: Dataset, options: TrainingOptions) -> tf.data.Dataset:
    data = tf.data.Dataset.from_tensor_slices((train.pixels, train.labels.astype(np.float32)))
    data = data.shuffle(len(train), seed=options.seed, reshuffle_each_iteration=True)
    data = data.map(_augment, num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(options.batch_size).prefetch(2)


class _BestMacroAP(keras.callbacks.Callback):
    """Evaluate validation macro-AP after each epoch, keep the best weights, stop on a plateau."""

    def __init__(self, validation: Dataset, options: TrainingOptions, progress: ProgressCallback | None):
        super().__init__()
        self.validation = validation
        self.options = options
        self.progress = progress
        self.best_ap = -1.0
        self.best_epoch = 0
        self.best_weights = None
        self.history: list[dict] = []
        self._started = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        probabilities = self.model.predict(self.validation.pixels.astype(np.float32), batch_size=64, verbose=0)
        metrics = evaluate(self.validation.labels, probabilities, self.validation.classes,
                           np.full(len(self.validation.classes), 0.5))
        macro_ap = metrics["macro_ap"] or 0.0
        if macro_ap > self.best_ap:
            self.best_ap, self.best_epoch = macro_ap, epoch + 1
            self.best_weights = self.model.get_weights()
        entry = {
            "epoch": epoch + 1,
            "epochs": self.options.epochs,
            "loss": round(float((logs or {}).get("loss", float("nan"))), 4),
            "val_macro_ap": round(macro_ap, 4),
            "best_val_macro_ap": round(self.best_ap, 4),
            "seconds": round(time.monotonic() - self._started, 2),
        }
        self.history.append(entry)
        logger.info(
            "epoch %d/%d loss %.4f val macro-AP %.4f (best %.4f at epoch %d) %.1f s",
            entry["epoch"], entry["epochs"], entry["loss"], macro_ap, self.best_ap, self.best_epoch, entry["seconds"],
        )
        if self.progress:
            self.progress({"stage": "training", **entry})
        if epoch + 1 - self.best_epoch >= self.options.patience:
            self.model.stop_training = True


def fit(model, train: Dataset, validation: Dataset, options: TrainingOptions, learning_rate: float,
        progress: ProgressCallback | None = None) -> list[dict]:
    """Fit ``model`` in place and leave it with its best-epoch weights; returns the epoch history."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=network.WeightedBinaryCrossentropy(network.positive_weights(train.labels)),
    )
    tracker = _BestMacroAP(validation, options, progress)
    model.fit(_training_data(train, options), epochs=options.epochs, callbacks=[tracker], shuffle=False, verbose=0)
    if tracker.best_weights is not None:
        model.set_weights(tracker.best_weights)
    return tracker.history


def _parent_macro_ap(store: ModelStore, parent: str | None, validation: Dataset) -> float | None:
    """Score the parent version on this validation split, so both versions are judged alike."""
    if parent is None:
        return None
    manifest = store.manifest(parent)
    if manifest.classes != validation.classes or tuple(
        manifest.input.get(k) for k in ("height", "width", "channels")
    ) != validation.spec.shape:
        # NOTE: a parent with other classes or input size is not comparable on these pixels,
        # so the new version is then judged against the prior baseline only.
        return None
    probabilities = litert_predict(store.version_dir(parent) / SERVING_FILE, validation.pixels)
    thresholds = np.array([manifest.thresholds[name] for name in manifest.classes])
    return evaluate(validation.labels, probabilities, validation.classes, thresholds)["macro_ap"]


def train_version(
    dataset: Dataset,
    store: ModelStore,
    lineage: str,
    exclusive_class: str | None,
    options: TrainingOptions = TrainingOptions(),
    parent: str | None = None,
    source: dict | None = None,
    progress: ProgressCallback | None = None,
    compare_with_parent: bool = True,
) -> TrainingOutcome:
    """Train on ``dataset`` and publish the result to ``lineage`` if it is good enough.

    Args:
        dataset: preprocessed, labelled images (all of them; the split happens here).
        store: the model store to publish to.
        lineage: ``default`` or ``project-<id>``.
        exclusive_class: the class emitted only alone, or None.
        options: hyper-parameters.
        parent: the version to continue from and to compare with (usually the lineage's
            current version), or None.
        source: a description of where the data came from, stored in the manifest.
        progress: called with a dict after each stage and epoch.
        compare_with_parent: judge the new version against the parent on the same
            validation split. False for the first version of a lineage that starts from
            another lineage's model: it only has to beat the prior baseline.

    Raises:
        TrainingError: too few examples for a training or validation split.
    """
    keras.utils.set_random_seed(options.seed)
    train, validation = dataset.split()
    if len(train) < MIN_TRAINING or len(validation) < MIN_VALIDATION:
        raise TrainingError(
            f"too few usable examples: {len(train)} for training and {len(validation)} for validation "
            f"(at least {MIN_TRAINING} and {MIN_VALIDATION} are needed; about "
            f"{VALIDATION_FRACTION:.0%} of tasks go to validation, chosen by task id)"
        )
    if progress:
        progress({"stage": "starting", "train": len(train), "validation": len(validation)})

    if parent is not None:
        try:
            store.manifest(parent)
        except VersionNotFound:
            logger.warning("parent version %s not found; training from scratch", parent)
            parent = None
    model, start = _warm_start_model(store, parent, dataset, options)
    if model is None:
        model = network.build_model(options.architecture, dataset.spec.shape, len(dataset.classes))
        learning_rate = options.learning_rate
    else:
        learning_rate = options.warm_learning_rate
        options = replace(options, patience=min(options.patience, options.warm_patience))
    logger.info("training %s on %d images, validating on %d: %s", options.architecture, len(train),
                len(validation), start)

    started = time.monotonic()
    history = fit(model, train, validation, options, learning_rate, progress)
    training_seconds = time.monotonic() - started

    try:
        staging = store.create_staging_dir()
    except OSError as error:
        raise store.write_error(lineage, error) from error
    try:
        if progress:
            progress({"stage": "exporting"})
        try:
            model.save(staging / KERAS_FILE)
            export_litert(model, staging / SERVING_FILE)
        except OSError as error:
            raise store.write_error(lineage, error) from error
        difference = check_agreement(model, staging / SERVING_FILE, validation.pixels)

        # Thresholds and metrics come from the serving export's outputs: that is what users get.
        probabilities = litert_predict(staging / SERVING_FILE, validation.pixels)
        thresholds = tune_thresholds(validation.labels, probabilities)
        prior = train.labels.mean(axis=0)
        metrics = evaluate(validation.labels, probabilities, dataset.classes, thresholds, prior)
        parent_ap = _parent_macro_ap(store, parent, validation) if compare_with_parent else None

        manifest = Manifest(
            version="",
            lineage=lineage,
            parent=parent,
            created_at="",
            architecture=options.architecture,
            classes=list(dataset.classes),
            exclusive_class=exclusive_class if exclusive_class in dataset.classes else None,
            input=dataset.spec.to_dict(),
            crop=dataset.crop.to_dict(),
            thresholds={name: round(float(t), 6) for name, t in zip(dataset.classes, thresholds)},
            counts={
                "train": len(train),
                "validation": len(validation),
                "train_positives": dict(zip(dataset.classes, map(int, train.labels.sum(axis=0)))),
                "validation_positives": dict(zip(dataset.classes, map(int, validation.labels.sum(axis=0)))),
            },
            metrics=metrics,
            training={
                **{k: v for k, v in asdict(options).items()},
                "start": start,
                "epochs_run": len(history),
                "best_epoch": max(history, key=lambda h: h["val_macro_ap"])["epoch"] if history else 0,
                "seconds": round(training_seconds, 1),
                "export_max_difference": difference,
                "validation_rule": f"sha256('task-<id>') < {VALIDATION_FRACTION} of the hash range",
                "parent_macro_ap": parent_ap,
                "history": history,
                "source": source or {},
            },
        )
        published, reason = _publish_decision(metrics, parent, parent_ap, options.tolerance)
        if not published:
            logger.warning("not publishing: %s", reason)
            return TrainingOutcome(False, reason, manifest, parent_ap, history)
        if progress:
            progress({"stage": "reporting"})
        try:
            parent_manifest = store.manifest(parent) if parent is not None else None
            write_report(staging, manifest, validation.labels, probabilities, parent_manifest)
        except (ValueError, OSError) as error:
            # The version is still worth publishing: 'thumbnail-ml report' falls back to its manifest.
            logger.warning("could not write the validation report of the new version: %s", error)

        if progress:
            progress({"stage": "publishing"})
        manifest = store.publish(lineage, staging, manifest)
        logger.info("published %s: %s", manifest.version, reason)
        return TrainingOutcome(True, reason, manifest, parent_ap, history)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _publish_decision(metrics: dict, parent: str | None, parent_ap: float | None, tolerance: float) -> tuple[bool, str]:
    macro_ap, prior_ap = metrics["macro_ap"], metrics["prior_macro_ap"]
    if macro_ap is None:
        return False, "the validation split has no positive example of any class"
    if parent_ap is not None:
        if macro_ap + tolerance < parent_ap:
            return False, (
                f"validation macro-AP {macro_ap:.4f} is worse than the parent {parent}'s {parent_ap:.4f} "
                f"by more than {tolerance}"
            )
        return True, f"validation macro-AP {macro_ap:.4f} vs parent {parent_ap:.4f}"
    if macro_ap <= prior_ap:
        return False, f"validation macro-AP {macro_ap:.4f} does not beat the prior baseline {prior_ap:.4f}"
    return True, f"validation macro-AP {macro_ap:.4f} beats the prior baseline {prior_ap:.4f}"


def describe(outcome: TrainingOutcome) -> str:
    """Return the outcome as indented JSON for logs and the command line."""
    return json.dumps(outcome.to_dict(), indent=2)
