"""The one small interface every pruning method implements.

A method sees the LLM's token set at two kinds of points: before layer 0 (``before_llm``)
and after any layer (``after_layer``). At each it may return the indices to keep. The model
does the gathering, recomputes RoPE and the mask for the kept tokens (which keep their
original position ids), and always keeps non-visual tokens whatever a method returns.

``before_llm`` also gets ``padding`` (B, L), True at pad tokens of a padded training batch
(None otherwise), so a method never treats padding as content. RoPE positions stay the
model's (padding-aware) ones: a method that moves hidden states between rows says, per row,
which source row's position it carries (``rope_source``), and the model gathers.

Adding a method is one new module that subclasses ``PruningMethod``, declares its ``Options`` and
calls ``register`` (``registry``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from ..options import Options


@dataclass
class PruneResult:
    keep: torch.Tensor | None = None      # indices into the *current* sequence to keep (the model adds
                                          # any non-visual ones missing: one device sync)
    # Sync-free alternative: unique indices of the *visual* tokens to keep; the model keeps BOS,
    # these and the tail, a length it knows without asking the device.
    keep_visual: torch.Tensor | None = None
    hidden: torch.Tensor | None = None    # replacement hidden states, same length (training-time soft selection)
    # (B, L) per row of ``hidden``, the index of the current token whose RoPE position it takes
    # (before layer 0 only; the model gathers from its padding-aware positions).
    rope_source: torch.Tensor | None = None
    # (B, len(keep_visual)) True where a row must ignore a kept visual token (treated like padding):
    # batched inference where each row keeps its own set and the batch keeps their union.
    ignored: torch.Tensor | None = None
    # (B, L) additive attention bias per key, from before layer 0 on (with ``hidden``; a method that sets it
    # makes no later cut): LightVLA's training weighs a patch chosen m times by -log m per copy.
    key_bias: torch.Tensor | None = None


@dataclass
class InferenceStep:
    """Per-inference inputs a method may use, and the stage counts it reports."""
    # uint8 frames, model order, resized to the model's input size before the centre crop (what
    # SpecPrune compares, as its released code compares the resized frames)
    frames: list[np.ndarray] = field(default_factory=list)
    mode: str = 'coarse'                                       # from the coarse/fine controller
    ee_speed: float | None = None                              # measured translation speed, m/s
    # earlier_frames(steps): the frames (resized likewise) that many control steps before these (the oldest
    # held if fewer), or None when there is none; None when the caller keeps no frame ring.
    earlier_frames: Callable[[int], list[np.ndarray] | None] | None = None
    template_tokens: int = 0          # prompt tokens of the fixed template before the instruction
    stages: list[tuple[str, int]] = field(default_factory=list)

    def report(self, stage: str, tokens: int) -> None:
        self.stages.append((stage, int(tokens)))


@dataclass(frozen=True)
class NoOptions(Options):
    """A method without options."""


class PruningMethod:
    """Base class: keeps everything. Subclasses override what they need.

    A method's options are one :class:`~vla_prune_ros.options.Options` dataclass, ``options_class``; the
    node's parameters, ``config/<method>.yaml`` and the README's parameter table derive from it.
    """
    name: ClassVar[str] = 'base'
    trainable: ClassVar[bool] = False
    options_class: ClassVar[type[Options]] = NoOptions

    def __init__(self, **options: Any):
        self.options = self.options_class.from_dict(options)

    def update_options(self, **changes: Any) -> None:
        self.options = self.options.replace(**changes)

    def reset(self) -> None:
        """Forget per-episode state (called at every new goal)."""

    def attention_layers(self, num_layers: int) -> set[int]:
        """Layers after which the model hands ``after_layer`` the attention of the rows after the
        patches (proprio, prompt, readout, placeholders, ``</s>``) to every current token:
        (B, seq_len - patch_end, current length), head-averaged probabilities."""
        return set()

    def before_llm(self, hidden: torch.Tensor, positions: torch.Tensor, layout, step: InferenceStep | None,
                   padding: torch.Tensor | None = None) -> PruneResult | None:
        return None

    def after_layer(self, layer: int, hidden: torch.Tensor, positions: torch.Tensor, layout,
                    step: InferenceStep | None, attention: torch.Tensor | None) -> PruneResult | None:
        return None

    def trainable_module(self) -> torch.nn.Module | None:
        """Parameters the method adds (LightVLA* queries); saved beside the model."""
        return None

    def weights_loaded(self, path) -> None:
        """Called after ``trainable_module`` was loaded from ``path``."""

    def missing_weights_reason(self, path) -> str:
        """Why running without the weights file ``path`` is not what was asked ('' if it is fine)."""
        return ''

