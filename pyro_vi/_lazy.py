"""Lazy package faces (PEP 562), as in NumPyro's and SciPy's packages.

:func:`attach` gives a package the ``__getattr__`` and ``__dir__`` that import a public name's
submodule on first use, so that importing a package (or one light submodule of it, such as
:mod:`pyro_vi.diagnostics.plots`) does not import its heavy siblings::

    __getattr__, __dir__ = attach(__name__, {"loo": "importance"})
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable
from typing import Any


def attach(
    package: str, exports: dict[str, str], submodules: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps a public name to the
    submodule (relative to ``package``) that defines it; a submodule is an attribute itself
    (``submodules`` lists those :func:`dir` shows). A name is imported once, then cached in the
    package's namespace."""
    submodules = tuple(submodules)

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        elif name in submodules or (
            not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}")
        ):
            value = importlib.import_module(f".{name}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)  # later look-ups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports, *submodules})

    return __getattr__, __dir__
