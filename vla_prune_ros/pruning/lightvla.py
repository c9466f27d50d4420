"""LightVLA: each patch asks the instruction and state which patch matters; keep the union of answers.

On the LLM's input embeddings, before layer 0, with no trainable parameters:

    P = rmsnorm(patches)            T = rmsnorm(every non-patch token)
    Q = rmsnorm(softmax(P Tᵀ/√D) T)  S = Q Pᵀ/√D     (patches x patches)

Inference keeps the union of each query row's argmax (a variable count; kept patches keep
their original position ids). Training adds noise to S and selects by straight-through
(``one_hot(argmax) + softmax − softmax.detach()``); the patches become ``S_hard @ P`` so the
sequence length stays fixed. Noise: ``'uniform'`` × scale as in the released code (default),
or ``'gumbel'`` as in the paper; the trainer anneals the scale from 1 to 0 with
``set_noise_scale``. ``forced_visual_keep`` keeps exactly that many patches, ranked by their
best score (the paper's operating point, for the benchmark).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from ..options import Options, option
from .base import PruneResult, PruningMethod
from .registry import register


def rms_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype)


@dataclass(frozen=True)
class LightVLAOptions(Options):
    prefix: ClassVar[str] = 'lightvla'

    noise: str = option('uniform', 'Selection noise kind (training only).', choices=('uniform', 'gumbel'))
    noise_scale: float = option(0.0, 'Selection noise scale (0 at inference).', low=0.0, high=1e3)
    forced_visual_keep: Optional[int] = option(
        None, 'Keep exactly this many patches; 0 = off (variable count).', low=1, high=1_000_000, off=0)
    min_visual_tokens: int = option(1, 'Never keep fewer visual tokens.', low=1, high=1_000_000)


@register
class LightVLA(PruningMethod):
    name = 'lightvla'
    trainable = True      # trains through the selection, even without parameters of its own
    options_class = LightVLAOptions

    def __init__(self, **options):
        super().__init__(**options)
        self.training = False

    def train(self, mode: bool = True) -> 'LightVLA':
        self.training = mode
        return self

    def set_noise_scale(self, scale: float) -> None:
        self.update_options(noise_scale=float(scale))

    def queries(self, patches: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        """Parameter-free queries, one per patch: (B, N, D)."""
        scale = 1.0 / math.sqrt(patches.shape[-1])
        context = torch.softmax((patches @ others.transpose(1, 2)) * scale, dim=-1) @ others
        return rms_normalize(context)

    def scores(self, hidden: torch.Tensor, positions: torch.Tensor, layout) -> tuple[torch.Tensor, torch.Tensor]:
        visual = layout.is_visual(positions)
        patches = rms_normalize(hidden[:, visual])
        others = rms_normalize(hidden[:, ~visual])
        queries = self.queries(patches, others)
        return (queries @ patches.transpose(1, 2)) / math.sqrt(patches.shape[-1]), visual

    def before_llm(self, hidden, positions, layout, step):
        scores, visual = self.scores(hidden, positions, layout)
        if self.training:
            new_hidden, chosen = self._soft_select(hidden, scores, visual)
            # Each row carries the selected patch's position id, as at inference (and in LightVLA's code).
            rope = positions.expand(hidden.shape[0], -1).clone()
            rope[:, visual] = positions[visual][chosen]
            return PruneResult(hidden=new_hidden, rope_positions=rope)
        visual_index = torch.nonzero(visual)[:, 0]
        forced = self.options.forced_visual_keep
        if forced is not None:
            best = scores[0].max(dim=0).values          # each patch's best score as any query's answer
            chosen = best.topk(min(forced, len(visual_index))).indices
        else:
            chosen = scores[0].argmax(dim=-1).unique()
        if len(chosen) < self.options.min_visual_tokens:
            best = scores[0].max(dim=0).values
            chosen = torch.cat([chosen, best.topk(min(self.options.min_visual_tokens, len(best))).indices]).unique()
        keep = torch.cat([torch.nonzero(~visual)[:, 0], visual_index[chosen]]).sort().values
        if step is not None:
            step.report('input', len(positions))
            step.report('lightvla_select', len(keep))
        return PruneResult(keep=keep)

    def _soft_select(self, hidden, scores, visual):
        scale = self.options.noise_scale
        if scale > 0:
            if self.options.noise == 'gumbel':
                uniform = torch.rand_like(scores).clamp_(1e-9, 1 - 1e-9)
                scores = scores + scale * -torch.log(-torch.log(uniform))
            else:
                scores = scores + scale * torch.rand_like(scores)
        soft = scores.softmax(dim=-1)
        chosen = soft.argmax(dim=-1)
        hard = torch.nn.functional.one_hot(chosen, soft.shape[-1]).to(soft.dtype)
        selection = hard + soft - soft.detach()          # straight-through
        patches = hidden[:, visual]
        hidden = hidden.clone()
        hidden[:, visual] = selection @ patches
        return hidden, chosen

    def kept_fraction(self, hidden, positions, layout) -> float:
        """Fraction of patches the inference rule would keep (reported during training)."""
        with torch.no_grad():
            scores, _ = self.scores(hidden, positions, layout)
            kept = [len(row.argmax(dim=-1).unique()) for row in scores]
        return sum(kept) / (len(kept) * scores.shape[-1])
