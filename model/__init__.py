"""Everything about the thumbnail CNN: decoding, cropping, the network, the model store, metrics.

Modules that import TensorFlow (``network``, ``export``) are only imported by training code;
serving uses ``runtime``, which needs only NumPy and the LiteRT interpreter.
"""
