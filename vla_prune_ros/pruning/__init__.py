"""Visual-token pruning methods behind one interface (see ``base``)."""
from .base import METHODS, InferenceStep, PruneResult, PruningMethod, create_method, register  # noqa: F401


def available_methods() -> list[str]:
    import importlib
    import pkgutil
    for module in pkgutil.iter_modules(__path__):
        if module.name != 'base':
            importlib.import_module(f'{__name__}.{module.name}')
    return sorted(METHODS)
