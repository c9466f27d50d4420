"""LightVLA*: LightVLA plus learnable query vectors (described in the paper, not released).

One learnable vector per patch slot. ``query_mode='add'`` (default) puts them beside the
parameter-free queries, ``Q = rmsnorm(Q_free + E)`` with E starting at zero, so training
starts from plain LightVLA. ``query_mode='replace'`` uses ``Q = rmsnorm(E)`` alone. Either
way there is one query per patch, so training keeps its fixed sequence length.

The queries are sized by the model at the first forward, or by the saved tensor when a
checkpoint's ``pruner_lightvla_star.safetensors`` is loaded first (as the policy does). That file
records the ``query_mode`` the queries were trained with; loading it switches the method to that
mode (queries trained to add mean nothing alone). A checkpoint without the file would silently run
plain LightVLA (zero queries in 'add' mode): the policy warns, and the node refuses the method.
For training, ``prepare_queries`` hands the queries to ``accelerate`` so multi-GPU ranks keep them
in sync (the forward goes through the prepared module), and ``save_queries`` writes the file.
"""
from __future__ import annotations

from dataclasses import dataclass

import warnings
from pathlib import Path

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

    def forward(self) -> torch.Tensor:
        return self.queries

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
        self._forward_through = self.learned      # the accelerate-prepared wrapper while training

    def ensure_queries(self, num_patches: int, dim: int, device=None, dtype=None) -> nn.Module:
        self.learned.materialize(num_patches, dim)
        if self.learned.queries.device != torch.device(device or self.learned.queries.device) or \
                (dtype is not None and self.learned.queries.dtype != dtype):
            self.learned.to(device=device, dtype=dtype)
        return self.learned

    def prepare_queries(self, accelerator, num_patches: int, dim: int) -> nn.Module:
        """Training: size the queries and prepare them with ``accelerate`` (DDP across ranks); the
        forward then runs through the prepared module so gradients are reduced. Returns the plain
        module (for the optimizer, state dicts and saving)."""
        self.ensure_queries(num_patches, dim, accelerator.device)
        self._forward_through = accelerator.prepare(self.learned)
        return self.learned

    def save_queries(self, directory) -> Path:
        """``pruner_lightvla_star.safetensors`` with the ``query_mode`` the queries were trained with."""
        from safetensors.torch import save_file
        path = Path(directory) / f'pruner_{self.name}.safetensors'
        save_file({k: v.detach().cpu().contiguous() for k, v in self.learned.state_dict().items()}, str(path),
                  metadata={'query_mode': self.options.query_mode})
        return path

    def weights_loaded(self, path) -> None:
        from safetensors import safe_open
        with safe_open(str(path), 'pt') as handle:
            saved = (handle.metadata() or {}).get('query_mode')
        if saved is None:
            warnings.warn(f'{path}: no query_mode recorded; using {self.options.query_mode!r}', stacklevel=3)
        elif saved != self.options.query_mode:
            warnings.warn(f'{path}: queries were trained with query_mode {saved!r}; using it instead of '
                          f'{self.options.query_mode!r}', stacklevel=3)
            self.update_options(query_mode=saved)

    def missing_weights_reason(self, path) -> str:
        return (f'lightvla_star: {path} is missing, so there are no learned queries and the method would '
                'run as plain LightVLA; train it (vla-prune train --method lightvla_star) or choose lightvla')

    def trainable_module(self):
        return self.learned

    def queries(self, patches, others, others_padding=None):
        self.ensure_queries(patches.shape[1], patches.shape[2], patches.device, patches.dtype)
        learned = self._forward_through()
        if self.options.query_mode == 'replace':
            return rms_normalize(learned).expand(patches.shape[0], -1, -1)
        return rms_normalize(self.context(patches, others, others_padding) + learned)
