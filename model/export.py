"""Export a Keras model to the LiteRT serving format (imports TensorFlow: training code only)."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

logger = logging.getLogger(__name__)

# Largest difference in probabilities allowed between Keras and the serving export.
AGREEMENT_TOLERANCE = 1e-5


class ExportMismatch(RuntimeError):
    """The serving export does not reproduce the Keras model's outputs."""


def export_litert(model, path: Path) -> None:
    """Convert ``model`` to a LiteRT flatbuffer at ``path``, with a dynamic batch dimension."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    # Keras prints the intermediate SavedModel's signature to stdout, which would corrupt the
    # JSON that the command line writes there.
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        flatbuffer = converter.convert()
    logger.debug("LiteRT conversion output: %s", captured.getvalue().strip())
    path.write_bytes(flatbuffer)


def litert_predict(path: Path, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Run the exported model on ``pixels`` (n, H, W, C) in batches; returns probabilities."""
    interpreter = Interpreter(model_path=str(path), num_threads=1)
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    outputs = []
    allocated = None
    for start in range(0, len(pixels), batch_size):
        batch = np.ascontiguousarray(pixels[start : start + batch_size], dtype=np.float32)
        if batch.shape != allocated:
            interpreter.resize_tensor_input(input_index, list(batch.shape))
            interpreter.allocate_tensors()
            allocated = batch.shape
        interpreter.set_tensor(input_index, batch)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output_index).copy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def check_agreement(model, path: Path, pixels: np.ndarray) -> float:
    """Compare Keras and LiteRT outputs on ``pixels``; returns the largest absolute difference.

    Raises:
        ExportMismatch: the difference exceeds ``AGREEMENT_TOLERANCE``.
    """
    if len(pixels) == 0:
        return 0.0
    expected = model.predict(pixels.astype(np.float32), batch_size=64, verbose=0)
    actual = litert_predict(path, pixels)
    difference = float(np.max(np.abs(expected - actual)))
    if difference > AGREEMENT_TOLERANCE:
        raise ExportMismatch(
            f"LiteRT export differs from the Keras model by {difference:.2e} "
            f"(limit {AGREEMENT_TOLERANCE:.0e}); the version was not published"
        )
    return difference
