"""LightVLA: each patch asks the instruction and state which patch matters; keep the union of answers.

On the LLM's input embeddings, before layer 0, with no trainable parameters. The sequence is
split as in LightVLA's code, ``[BOS | patches | rest]``:

    P = rmsnorm(patches)            T = rmsnorm(rest: proprio, prompt, readout, placeholders, </s>)
    Q = rmsnorm(softmax(P Tᵀ/√D) T)  S = Q Pᵀ/√D     (patches x patches)

BOS is not a query. Pad tokens of a training batch are masked out of the softmax, so they never
answer a query and a padded sample selects exactly what it selects alone.

Inference keeps the union of each query row's argmax (a variable count; kept patches keep
their original position ids). In a batch each row keeps its own set: the batch keeps the union
and every row ignores (as padding) the patches only other rows chose. Training adds noise to S
and selects by straight-through (``one_hot(argmax) + softmax − softmax.detach()``); the patches
become ``S_hard @ P`` so the sequence length stays fixed, and each patch row takes the RoPE
position of the patch it selected, from the model's padding-aware positions. Noise:
``'uniform'`` × scale as in the released code (default), or ``'gumbel'`` as in the paper; the
trainer anneals the scale from 1 to 0 with ``set_noise_scale``. ``forced_visual_keep`` keeps
exactly that many patches, ranked by their best score (the paper's operating point, for the
benchmark).

Beyond the released code, on purpose: in training a patch chosen by m queries counts once
(``train_as_inferred``, default on). Its m rows are identical (same input, same position), so a
key bias of -log m on each makes their summed attention that of one token: the training forward is
the inference forward, and every row still gets a gradient. The released code lets every repeat
count, so a patch chosen by 30 queries weighs 30 times in training and once at inference. Measured
closed loop on the same seeds: the bundled fine-tune (trained with repeats) solved 15/100 run with
its repeats and 6/100 by its union (``none`` 30/100); from one init and data, counting once took a
fine-tune from 0/100 to 7/100 (``benchmarks/README.md``, session 16).
Also: ``min_visual_tokens`` tops the union up to a floor by the
same best score (the code has no floor; default 1 changes nothing); batched inference keeps
per-row sets as above (the code runs batch 1); the kept count is read from the device once per
inference (a variable count needs it), the only device sync of the call.
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


def choice_counts(chosen: torch.Tensor) -> torch.Tensor:
    """(B, N): for each row, how many rows of its sample chose the same patch."""
    per_patch = torch.nn.functional.one_hot(chosen, chosen.shape[-1]).sum(dim=1)     # (B, N) per patch
    return per_patch.gather(1, chosen)


@dataclass(frozen=True)
class LightVLAOptions(Options):
    prefix: ClassVar[str] = 'lightvla'

    noise: str = option('uniform', 'Selection noise kind (training only).', choices=('uniform', 'gumbel'))
    noise_scale: float = option(0.0, 'Selection noise scale (0 at inference).', low=0.0, high=1e3)
    forced_visual_keep: Optional[int] = option(
        None, 'Keep exactly this many patches; 0 = off (variable count).', low=1, high=1_000_000, off=0)
    min_visual_tokens: int = option(1, 'Never keep fewer visual tokens.', low=1, high=1_000_000)
    train_as_inferred: bool = option(
        True, 'Training: a patch chosen by m queries counts once (each copy weighted 1/m as a key), as at '
              'inference; off: every repeat is a token, as in the released code.')


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

    def context(self, patches: torch.Tensor, others: torch.Tensor, others_padding: torch.Tensor | None
                ) -> torch.Tensor:
        """softmax(P Tᵀ/√D) T: what each patch reads from the instruction and state; pads never answer."""
        logits = (patches @ others.transpose(1, 2)) * (1.0 / math.sqrt(patches.shape[-1]))
        if others_padding is not None:
            logits = logits.masked_fill(others_padding[:, None, :], float('-inf'))
        return torch.softmax(logits, dim=-1) @ others

    def queries(self, patches: torch.Tensor, others: torch.Tensor, others_padding: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Parameter-free queries, one per patch: (B, N, D)."""
        return rms_normalize(self.context(patches, others, others_padding))

    def scores(self, hidden: torch.Tensor, layout, padding: torch.Tensor | None = None) -> torch.Tensor:
        """S (B, patches, patches) on the full input sequence ``[BOS | patches | rest]``; T is ``rest``."""
        patches = rms_normalize(hidden[:, layout.patch_start:layout.patch_end])
        others = rms_normalize(hidden[:, layout.patch_end:])
        others_padding = padding[:, layout.patch_end:] if padding is not None else None
        queries = self.queries(patches, others, others_padding)
        return (queries @ patches.transpose(1, 2)) / math.sqrt(patches.shape[-1])

    def before_llm(self, hidden, positions, layout, step, padding=None):
        scores = self.scores(hidden, layout, padding)
        if self.training:
            new_hidden, chosen = self._soft_select(hidden, scores, layout)
            # Each patch row carries the selected patch's position (as at inference, and in LightVLA's
            # code); the model takes it from its own padding-aware positions.
            rope_source = torch.arange(hidden.shape[1], device=hidden.device).repeat(hidden.shape[0], 1)
            rope_source[:, layout.patch_start:layout.patch_end] = chosen + layout.patch_start
            key_bias = None
            if self.options.train_as_inferred:
                # A patch chosen m times is m identical rows (same input, same position): -log m on each
                # as a key gives the m copies together the attention one token gets, and each copy learns.
                bias = -torch.log(choice_counts(chosen).to(new_hidden.dtype))
                key_bias = torch.zeros(hidden.shape[:2], dtype=new_hidden.dtype, device=hidden.device)
                key_bias[:, layout.patch_start:layout.patch_end] = bias
            return PruneResult(hidden=new_hidden, rope_source=rope_source, key_bias=key_bias)
        chosen = self.selected_patches(scores)                      # (B, N) bool, per row
        union = torch.nonzero(chosen.any(dim=0))[:, 0]              # the one sync: the kept count
        ignored = ~chosen[:, union] if hidden.shape[0] > 1 else None  # each row sees only its own patches
        if step is not None:
            step.report('input', len(positions))
            step.report('lightvla_select', len(positions) - layout.num_patches + len(union))
        return PruneResult(keep_visual=union + layout.patch_start, ignored=ignored)

    def selected_patches(self, scores: torch.Tensor) -> torch.Tensor:
        """Per row, the patches inference keeps: the union of row argmaxes (or the forced top-n), floored."""
        batch, count = scores.shape[0], scores.shape[-1]
        chosen = torch.zeros(batch, count, dtype=torch.bool, device=scores.device)
        best = scores.max(dim=1).values                  # each patch's best score as any query's answer
        forced = self.options.forced_visual_keep
        if forced is not None:
            chosen.scatter_(1, best.topk(min(forced, count), dim=-1).indices, True)
        else:
            chosen.scatter_(1, scores.argmax(dim=-1), True)
        floor = min(self.options.min_visual_tokens, count)
        top_up = torch.zeros_like(chosen).scatter_(1, best.topk(floor, dim=-1).indices, True)
        return chosen | (top_up & (chosen.sum(-1, keepdim=True) < floor))

    def _soft_select(self, hidden, scores, layout):
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
        patches = slice(layout.patch_start, layout.patch_end)
        hidden = torch.cat([hidden[:, :patches.start], selection @ hidden[:, patches], hidden[:, patches.stop:]],
                           dim=1)
        return hidden, chosen

    def kept_fraction(self, hidden, positions, layout, padding=None) -> float:
        """Fraction of patches the inference rule would keep (reported during training)."""
        with torch.no_grad():
            kept = self.selected_patches(self.scores(hidden, layout, padding))
        return float(kept.float().mean())
