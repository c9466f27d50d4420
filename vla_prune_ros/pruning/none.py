"""``none``: the unpruned baseline. Every token reaches every layer."""
from .base import PruningMethod
from .registry import register


@register
class NoPruning(PruningMethod):
    name = 'none'
