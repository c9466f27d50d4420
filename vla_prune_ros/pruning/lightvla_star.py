"""LightVLA*: LightVLA plus learnable query vectors (described in the paper, not released).

One learnable vector per patch slot. ``query_mode='add'`` (default) puts them beside the
parameter-free queries, ``Q = rmsnorm(Q_free + E)`` with E starting at zero, so training
starts from plain LightVLA. ``query_mode='replace'`` uses ``Q = rmsnorm(E)`` alone. Either
way there is one query per patch, so training keeps its fixed sequence length.

The queries are sized by the model at the first forward, or by the saved tensor when a
checkpoint's ``pruner_lightvla_star.safetensors`` is loaded first (as the policy does).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..options import option
from .lightvla import LightVLA, LightVLAOptions, rms_normalize
from .registry import register


class LearnedQueries(nn.Module):
    """Holds the (num_patches, dim) query matrix once its size is known."""

    def __init__(self):
        super().__init__()
        self.register_parameter('queries', None)

    def materialize(self, num_patches: int, dim: int) -> None:
        if self.queries is None:
            self.queries = nn.Parameter(torch.zeros(num_patches, dim))   # zero: 'add' starts as LightVLA
        elif tuple(self.queries.shape) != (num_patches, dim):
            raise ValueError(f'lightvla_star: learned queries are {tuple(self.queries.shape)}, '
                             f'the model needs {(num_patches, dim)}')

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + 'queries')
        if saved is not None:       # loading before any forward: take the saved size
            self.materialize(*saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@dataclass(frozen=True)
class LightVLAStarOptions(LightVLAOptions):
    """LightVLA's options (same parameter namespace) plus how the learned queries combine."""
    query_mode: str = option('add', "LightVLA* only: learned queries 'add' to or 'replace' the free ones.",
                             choices=('add', 'replace'))


@register
class LightVLAStar(LightVLA):
    name = 'lightvla_star'
    options_class = LightVLAStarOptions

    def __init__(self, **options):
        super().__init__(**options)
        self.learned = LearnedQueries()

    def ensure_queries(self, num_patches: int, dim: int, device=None, dtype=None) -> nn.Module:
        self.learned.materialize(num_patches, dim)
        self.learned.to(device=device, dtype=dtype)
        return self.learned

    def trainable_module(self):
        return self.learned

    def queries(self, patches, others, others_padding=None):
        learned = self.ensure_queries(patches.shape[1], patches.shape[2], patches.device, patches.dtype).queries
        if self.options.query_mode == 'replace':
            return rms_normalize(learned).expand(patches.shape[0], -1, -1)
        return rms_normalize(self.context(patches, others, others_padding) + learned)
