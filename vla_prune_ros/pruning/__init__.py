"""Visual-token pruning methods behind one interface (``base``), one module per method.

``BUILTIN_METHODS`` are the methods the node offers, in the order its ``method`` parameter lists them.
"""
from .base import InferenceStep, NoOptions, PruneResult, PruningMethod  # noqa: F401
from .lightvla import LightVLA
from .lightvla_star import LightVLAStar
from .none import NoPruning
from .registry import METHODS, available_methods, create_method, register  # noqa: F401
from .specprune import SpecPrune

BUILTIN_METHODS = (NoPruning, SpecPrune, LightVLA, LightVLAStar)
