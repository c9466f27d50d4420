"""The registry of pruning methods: each method module calls :func:`register` on import."""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from .base import PruningMethod

METHODS: dict[str, type[PruningMethod]] = {}


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    METHODS[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    """Imports every module of this package, so each method registers itself; their names."""
    package = __name__.rpartition('.')[0]
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f'{package}.{module.name}')
    return sorted(METHODS)


def create_method(name: str, **options: Any) -> PruningMethod:
    available_methods()
    if name not in METHODS:
        raise ValueError(f"unknown pruning method '{name}'; choose one of {sorted(METHODS)}")
    return METHODS[name](**options)
