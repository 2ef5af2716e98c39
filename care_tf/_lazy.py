"""Lazy re-exports for package `__init__` files (PEP 562).

A package lists `public name -> module that defines it`; the module is imported on
first use. So `python -m care_tf.train --help` (which imports the `care_tf` and
`care_tf.train` packages) answers without loading TensorFlow.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable, Callable]:
    """`(__getattr__, __dir__)` for `package` re-exporting `exports` lazily.

    Args:
        package: str. The package's `__name__`.
        exports: dict. Public name -> module defining it; a name whose module is
            `package.name` is that submodule itself.
    """

    def __getattr__(name: str):  # noqa: N807
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loaded = importlib.import_module(module)
        value = loaded if module == f"{package}.{name}" else getattr(loaded, name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__


def load_all(package: str, exports: dict[str, str]) -> None:
    """Imports every module of `exports` now (registers their Keras classes)."""
    for module in dict.fromkeys(exports.values()):
        importlib.import_module(module)


def lazy_package(package: str, exports: dict[str, str]) -> None:
    """Makes subpackage `package` re-export `exports` lazily: sets its `__all__`,
    `__getattr__` and `__dir__`. When Keras is already loaded (a program, not a
    command line's start-up) it then imports every module, so the package's Keras
    classes are registered for deserialising."""
    module = sys.modules[package]
    module.__all__ = sorted(exports)
    module.__getattr__, module.__dir__ = lazy_exports(package, exports)
    if "keras" in sys.modules:
        load_all(package, exports)
