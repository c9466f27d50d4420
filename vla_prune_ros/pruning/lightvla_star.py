"""LightVLA*: LightVLA plus learnable query vectors (described in the paper, not released).

One learnable vector per patch slot. ``query_mode='add'`` (default) puts them beside the
parameter-free queries, ``Q = rmsnorm(Q_free + E)`` with E starting at zero, so training
starts from plain LightVLA. ``query_mode='replace'`` uses ``Q = rmsnorm(E)`` alone. Either
way there is one query per patch, so training keeps its fixed sequence length.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import register
from .lightvla import LightVLA, rms_normalize


@register
class LightVLAStar(LightVLA):
    name = 'lightvla_star'

    @classmethod
    def option_defaults(cls):
        return {**super().option_defaults(), 'query_mode': 'add'}

    @classmethod
    def validate_options(cls, o):
        super().validate_options(o)
        if o['query_mode'] not in ('add', 'replace'):
            raise ValueError("lightvla_star.query_mode: must be 'add' or 'replace'")

    def __init__(self, **options):
        super().__init__(**options)
        self.learned = None          # built lazily: its size depends on the model

    def ensure_queries(self, num_patches: int, dim: int, device=None, dtype=None) -> nn.Module:
        if self.learned is None:
            self.learned = nn.ParameterDict({'queries': nn.Parameter(torch.zeros(num_patches, dim))})
        self.learned.to(device=device, dtype=dtype)
        return self.learned

    def trainable_module(self):
        return self.learned

    def queries(self, patches, others):
        learned = self.ensure_queries(patches.shape[1], patches.shape[2], patches.device, patches.dtype)['queries']
        if self.options['query_mode'] == 'replace':
            return rms_normalize(learned).expand(patches.shape[0], -1, -1)
        scale = patches.shape[-1] ** -0.5
        context = torch.softmax((patches @ others.transpose(1, 2)) * scale, dim=-1) @ others
        return rms_normalize(context + learned)
