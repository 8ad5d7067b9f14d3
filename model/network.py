"""The ShallowNet family of Keras networks (imports TensorFlow: training code only).

``shallownet`` is the one-block network of the original course project: a 3x3 convolution
with 32 filters, ReLU, 2x2 max pooling, flatten, dense, sigmoid. Its flatten layer grows with
the input (10.4M weights at 272x480), so it is slow and overfits small sets. ``shallownet2``
and ``shallownet3`` add blocks with batch normalisation, then global average pooling and
dropout, which keeps the weights in the tens of thousands whatever the input size.

All outputs are independent sigmoids (multi-label), trained with binary cross-entropy that
weighs positives up for rare classes.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

# Pixels arrive as 0..255 (uint8 cast to float32); the network scales them itself, so the
# serving export takes the preprocessed image as is.
PIXEL_SCALE = 1.0 / 255.0
# Upper bound on the positive-class weight: a class seen on 0.7% of images would otherwise
# get a weight of 140 and dominate the loss.
MAX_POSITIVE_WEIGHT = 10.0


def _head(x, n_classes: int, dropout: float):
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(n_classes, activation="sigmoid", name="probabilities")(x)


def build_shallownet(input_shape: tuple[int, int, int], n_classes: int) -> keras.Model:
    """Build the original one-block ShallowNet: conv 3x3x32, ReLU, max pool, flatten, dense."""
    inputs = keras.Input(input_shape, name="pixels")
    x = layers.Rescaling(PIXEL_SCALE, name="scale")(inputs)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="block1_conv")(x)
    x = layers.MaxPooling2D(2, name="block1_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, _head(x, n_classes, dropout=0.0), name="shallownet")


def _block(x, filters: int, index: int, strides: int = 1, separable: bool = False):
    if separable:
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"block{index}_sepconv")(x)
    else:
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"block{index}_conv")(x)
    x = layers.BatchNormalization(name=f"block{index}_bn")(x)
    x = layers.ReLU(name=f"block{index}_relu")(x)
    return layers.MaxPooling2D(2, name=f"block{index}_pool")(x)


def _build_deep(input_shape, n_classes: int, filters: tuple[int, ...], name: str,
                separable: bool = False) -> keras.Model:
    inputs = keras.Input(input_shape, name="pixels")
    x = layers.Rescaling(PIXEL_SCALE, name="scale")(inputs)
    # The first convolution has stride 2: thumbnails carry little detail at full input
    # resolution, and it cuts the cost of every later layer by four. With ``separable``, the
    # later blocks use depthwise-separable convolutions.
    for index, count in enumerate(filters, start=1):
        x = _block(x, count, index, strides=2 if index == 1 else 1, separable=separable and index > 1)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, _head(x, n_classes, dropout=0.3), name=name)


def build_shallownet2(input_shape: tuple[int, int, int], n_classes: int) -> keras.Model:
    """Build a two-block ShallowNet (32 and 64 filters) with global pooling and dropout."""
    return _build_deep(input_shape, n_classes, (32, 64), "shallownet2")


def build_shallownet3(input_shape: tuple[int, int, int], n_classes: int) -> keras.Model:
    """Build a three-block ShallowNet (32, 64 and 128 filters) with global pooling and dropout."""
    return _build_deep(input_shape, n_classes, (32, 64, 128), "shallownet3")


def build_shallownet3_separable(input_shape: tuple[int, int, int], n_classes: int) -> keras.Model:
    """Build a three-block ShallowNet of 16, 32 and 64 filters, blocks 2 and 3 depthwise-separable.

    About a tenth of shallownet3's multiply-adds: on the labelled thumbnails it reaches the
    same validation macro-AP within seed noise, with epochs about three times as fast
    (bench/input_size.py).
    """
    return _build_deep(input_shape, n_classes, (16, 32, 64), "shallownet3-separable", separable=True)


ARCHITECTURES = {
    "shallownet": build_shallownet,
    "shallownet2": build_shallownet2,
    "shallownet3": build_shallownet3,
    "shallownet3-separable": build_shallownet3_separable,
}
DEFAULT_ARCHITECTURE = "shallownet3-separable"


def build_model(architecture: str, input_shape: tuple[int, int, int], n_classes: int) -> keras.Model:
    """Build a network of the ShallowNet family by name.

    Raises:
        ValueError: unknown architecture name.
    """
    try:
        builder = ARCHITECTURES[architecture]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown architecture {architecture!r}: choose one of {known}") from None
    return builder(input_shape, n_classes)


def positive_weights(labels: np.ndarray) -> np.ndarray:
    """Weigh each class's positives by sqrt(negatives / positives), between 1 and MAX_POSITIVE_WEIGHT.

    The square root softens the correction: full inverse frequency makes rare classes fire
    on everything in the first epochs.
    """
    labels = np.asarray(labels, dtype=np.float64)
    positives = labels.sum(axis=0)
    negatives = labels.shape[0] - positives
    ratio = np.sqrt(negatives / np.maximum(positives, 1.0))
    return np.clip(ratio, 1.0, MAX_POSITIVE_WEIGHT).astype(np.float32)


class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy over independent sigmoids, with a per-class weight on positives."""

    def __init__(self, weights, name: str = "weighted_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.weights = [float(w) for w in np.asarray(weights).ravel()]

    def call(self, y_true, y_pred):
        ops = keras.ops
        y_true = ops.cast(y_true, y_pred.dtype)
        weights = ops.convert_to_tensor(self.weights, dtype=y_pred.dtype)
        y_pred = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
        loss = -(weights * y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred))
        return ops.mean(loss, axis=-1)

    def get_config(self):
        return {**super().get_config(), "weights": self.weights}
