"""Subcommands that live in their own modules.

Each module here defines ``register(commands)``, which adds its subparsers to the
``thumbnail-ml`` parser (``commands`` is the object ``add_subparsers`` returned). Handlers take
``(args, settings)`` and return an exit code, and raise ``thumbnail_ml.cli.CommandError`` for
failures the user can fix.
"""

from __future__ import annotations

import importlib
import pkgutil


def register_all(commands) -> None:
    """Import every module of this package and let it add its subcommands."""
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        importlib.import_module(f"{__name__}.{module.name}").register(commands)
