"""Front doors that import on first use: a subpackage names its public objects without importing its modules,
so that ``import agegender.io`` stays cheap and a torch-free install can import every torch-free door.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps each public name to the module of the package
    that defines it (``{"open_image": "images"}``); the module is imported the first time the name is asked for.

    >>> getattr_, dir_ = lazy_exports("agegender.errors_demo", {"one_line": "x"})
    >>> dir_()
    ['one_line']
    >>> getattr_("missing")
    Traceback (most recent call last):
    ...
    AttributeError: module 'agegender.errors_demo' has no attribute 'missing'
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__


def importable(module: str) -> bool:
    """Whether ``module`` can be imported here, without importing it (False for one blocked in ``sys.modules``).

    >>> importable("json"), importable("agegender_no_such_module")
    (True, False)
    """
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules, i.e. blocked
        return False
