"""Run a published model version with the LiteRT interpreter, without TensorFlow.

Loading TensorFlow costs about 5 s and 600 MB per process; the LiteRT interpreter loads a
version in milliseconds. Everything that serves predictions goes through ``Predictor``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from model.decision import Decision, decide
from model.letterbox import CropSettings
from model.manifest import Manifest
from model.preprocess import InputSpec, PreprocessResult, preprocess_many

logger = logging.getLogger(__name__)

SERVING_FILE = "model.tflite"


class Predictor:
    """One loaded model version: preprocessing settings, thresholds and a LiteRT interpreter.

    ``predict_pixels`` is safe to call from several threads: calls are serialised, because an
    interpreter reuses its tensor buffers and cannot run two batches at once.
    """

    def __init__(self, version_dir: Path, manifest: Manifest, num_threads: int = 1):
        self.version_dir = Path(version_dir)
        self.manifest = manifest
        self.spec = InputSpec.from_dict(manifest.input)
        self.crop = CropSettings.from_dict(manifest.crop)
        self.thresholds = np.asarray([manifest.thresholds[name] for name in manifest.classes])
        self._interpreter = Interpreter(
            model_path=str(self.version_dir / SERVING_FILE), num_threads=num_threads
        )
        self._input_index = self._interpreter.get_input_details()[0]["index"]
        self._output_index = self._interpreter.get_output_details()[0]["index"]
        self._batch_size = 0
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Return sigmoid probabilities (n, n_classes) for preprocessed ``uint8`` images (n, H, W, C)."""
        if pixels.shape[0] == 0:
            return np.zeros((0, len(self.manifest.classes)), np.float32)
        batch = np.ascontiguousarray(pixels, dtype=np.float32)
        with self._lock:
            if batch.shape[0] != self._batch_size:
                self._interpreter.resize_tensor_input(self._input_index, list(batch.shape))
                self._interpreter.allocate_tensors()
                self._batch_size = batch.shape[0]
            self._interpreter.set_tensor(self._input_index, batch)
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output_index).copy()

    def preprocess(self, items: Sequence[tuple[str, bytes]], threads: int = 2) -> PreprocessResult:
        """Decode, crop and resize (name, bytes) pairs with this version's settings."""
        return preprocess_many(items, self.spec, self.crop, threads=threads)

    def decide(self, probabilities: np.ndarray, allowed: set[str] | None = None) -> list[Decision]:
        """Apply this version's thresholds and exclusive-class rule; see ``model.decision.decide``."""
        return decide(probabilities, self.manifest.classes, self.thresholds, self.manifest.exclusive_class, allowed)
