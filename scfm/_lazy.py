"""Lazy package attributes: ``package.name`` imports its module on first use.

Used by ``scfm``, ``scfm.data`` and ``scfm.inference`` so that importing them stays cheap (no
torch). A public function may share its module's name (``scfm.inference.embed`` is both): the
import system binds a loaded submodule on its package under that name, which would hide the
function, so such bindings are refused.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


def install(package: str, exports: dict[str, str]) -> None:
    """Make ``exports`` (attribute → module) lazy attributes of ``package``."""
    module = sys.modules[package]

    class _Package(types.ModuleType):
        def __setattr__(self, name: str, value: Any) -> None:
            if name in exports and isinstance(value, types.ModuleType):
                return
            super().__setattr__(name, value)

        def __getattr__(self, name: str) -> Any:
            if name in exports:
                return getattr(importlib.import_module(exports[name]), name)
            raise AttributeError(f"module {package!r} has no attribute {name!r}")

        def __dir__(self) -> list[str]:
            return sorted(set(super().__dir__()) | set(exports))

    module.__class__ = _Package
    module.__all__ = sorted(exports)
