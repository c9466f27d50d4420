"""SpecPrune-VLA: training-free, two-level token pruning (action level + layer level).

Choices where the paper and the released code differ, or where this project goes further:

* **Static pruning is progressive over layers 0 and 1.** After layer 0 the visual tokens
  kept are (patches that changed since the earlier frame) ∪ (each view's top-3k patches by
  prompt->patch attention) ∪ (the previous inference's important set). After layer 1 the
  same with the top-k. Layer 0 runs on all tokens, layer 1 on the first cut, layers 2+ on
  the second. Attention rows are computed only for prompt queries from that layer's q/k.
* **Global history is connected** (the paper uses it, the released code leaves it an empty
  list): each inference's layer-1 top-k set is always kept by the next inference.
* **Δ is counted in control steps, as in the paper**, and converted to inferences because the
  policy sees a frame only when it infers: ``Δ_inferences = ceil(Δ / steps_per_inference)``.
  ``v`` in the Δ formula is the measured end-effector speed times ``delta_speed_scale``.
* **Caps and top-k are given per 256 patches per view** (OFT's grid) and scaled to the model.
* **Dynamic pruning** (code: off by default; paper: on) is on by default here and a parameter.
  The importance is an EMA (α = 0.2) of each token's normalised attention rank, updated at
  layers 0, 1 and every layer of S; at S the top ``dynamic_keep_ratio`` of the remaining
  visual tokens survive, never fewer than ``min_visual_tokens``. S is given for a 32-layer
  LLM and scaled to the model's depth.
* ``forced_static_visual`` forces the static stage to keep exactly that many visual tokens
  (the papers' operating point for the benchmark), ranking by attention then dissimilarity.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import torch

from ..options import Options, option
from .base import InferenceStep, PruneResult, PruningMethod
from .registry import register

OFT_PATCHES_PER_VIEW = 256
OFT_LAYERS = 32


@dataclass(frozen=True)
class SpecPruneOptions(Options):
    """Caps and top-k are per view and per 256 patches, layers for a 32-layer LLM; both are scaled to the model."""
    prefix: ClassVar[str] = 'specprune'

    similarity_threshold: float = option(
        0.986, 'Cosine similarity above which a patch counts as unchanged (static).', low=0.0, high=1.0)
    static_cap_coarse: int = option(200, 'Max static patches per view (per 256), coarse mode.',
                                    low=0, high=OFT_PATCHES_PER_VIEW)
    static_cap_fine: int = option(220, 'Max static patches per view (per 256), fine mode.',
                                  low=0, high=OFT_PATCHES_PER_VIEW)
    topk_coarse: tuple[int, ...] = option(
        (16, 12), 'Attention top-k per view (primary, wrist, ...; per 256 patches), coarse mode.',
        low=0, high=OFT_PATCHES_PER_VIEW, min_length=1)
    topk_fine: tuple[int, ...] = option((25, 19), 'Attention top-k per view (per 256 patches), fine mode.',
                                        low=0, high=OFT_PATCHES_PER_VIEW, min_length=1)
    layer0_topk_multiplier: int = option(3, 'After layer 0 keep multiplier * k per view.', low=1, high=64)
    delta_slope: float = option(-16.0 / 18.0, 'Frame gap formula: slope on the speed.', low=-1e3, high=1e3)
    delta_intercept: float = option(22.0 / 3.0, 'Frame gap formula: intercept.', low=-1e3, high=1e3)
    delta_offset: int = option(3, 'Frame gap formula: offset (control steps).', low=-1000, high=1000)
    delta_max: int = option(6, 'Largest frame gap (control steps).', low=1, high=1000)
    delta_min: int = option(1, 'Smallest frame gap (control steps).', low=1, high=1000)
    delta_speed_scale: float = option(1.0, 'Measured speed (m/s) to the formula speed unit.', low=0.0, high=1e6)
    steps_per_inference: int = option(8, 'Control steps between inferences (Δ to inferences).',
                                      low=1, high=1024)
    use_global_history: bool = option(True, "Always keep the previous inference's important patches.")
    dynamic: bool = option(True, 'Layer-level (dynamic) pruning inside the LLM.')
    dynamic_layers: tuple[int, ...] = option(
        (5, 10, 15, 20, 25), 'Layers (of a 32-layer LLM, scaled to the model) where dynamic pruning cuts.',
        low=0, high=1024)
    dynamic_keep_ratio: float = option(0.8, 'Fraction of visual tokens kept at each dynamic cut.',
                                       low=0.0, low_exclusive=True, high=1.0)
    ema_alpha: float = option(0.2, 'EMA factor of the attention-rank importance.', low=0.0, low_exclusive=True,
                              high=1.0)
    min_visual_tokens: int = option(16, 'Never keep fewer visual tokens.', low=1, high=1_000_000)
    forced_static_visual: Optional[int] = option(
        None, 'Force the static stage to keep exactly this many visual tokens; 0 = off.', low=1, high=1_000_000,
        off=0)

    def check(self):
        if self.delta_max < self.delta_min:
            raise ValueError(f'delta_max: {self.delta_max} must be >= delta_min ({self.delta_min})')


@register
class SpecPrune(PruningMethod):
    name = 'specprune'
    options_class = SpecPruneOptions

    def __init__(self, **options):
        super().__init__(**options)
        self.reset()

    def reset(self):
        self.frame_history: deque[list[np.ndarray]] = deque(maxlen=self.options.delta_max + 1)
        self.previous_important = torch.empty(0, dtype=torch.long)   # original positions
        self._static = torch.empty(0, dtype=torch.long)              # this inference's static candidates
        self._importance: torch.Tensor | None = None                  # EMA per original position
        self._num_layers = OFT_LAYERS

    # --- helpers -------------------------------------------------------------

    def delta_steps(self, speed: float | None) -> int:
        o = self.options
        if speed is None or not math.isfinite(speed):
            return o.delta_max
        v = speed * o.delta_speed_scale
        delta = int(o.delta_slope * v + o.delta_intercept) + o.delta_offset
        return max(o.delta_min, min(delta, o.delta_max))

    def _scaled(self, count: float, patches_per_view: int) -> int:
        return int(round(count * patches_per_view / OFT_PATCHES_PER_VIEW))

    def _topk_per_view(self, mode: str, num_views: int) -> list[int]:
        ks = getattr(self.options, 'topk_fine' if mode == 'fine' else 'topk_coarse')
        return [ks[min(i, len(ks) - 1)] for i in range(num_views)]

    def static_candidates(self, step: InferenceStep, layout) -> torch.Tensor:
        """Original positions of patches that did not change since the frame Δ back (capped per view)."""
        frames = step.frames
        history = list(self.frame_history)
        self.frame_history.append(frames)
        if not history:
            return torch.empty(0, dtype=torch.long)
        back = math.ceil(self.delta_steps(step.ee_speed) / self.options.steps_per_inference)
        reference = history[-min(back, len(history))]
        cap_option = 'static_cap_fine' if step.mode == 'fine' else 'static_cap_coarse'
        cap = self._scaled(getattr(self.options, cap_option), layout.patches_per_camera)
        grid = int(math.isqrt(layout.patches_per_camera))
        static = []
        for camera, (now, before) in enumerate(zip(frames, reference)):
            similarity = patch_cosine_similarity(now, before, grid)
            most_similar = np.argsort(-similarity, kind='stable')[:cap]
            chosen = most_similar[similarity[most_similar] > self.options.similarity_threshold]
            static.append(chosen + layout.camera_range(camera).start)
        return torch.from_numpy(np.sort(np.concatenate(static))).long()

    def _attention_topk(self, attention: torch.Tensor, positions: torch.Tensor, layout, ks: list[int]
                        ) -> torch.Tensor:
        """Each view's top-k patches by prompt attention, as original positions."""
        visual = layout.is_visual(positions)
        cameras = layout.camera_of(positions)
        chosen = []
        for camera, k in enumerate(ks):
            index = torch.nonzero(visual & (cameras == camera))[:, 0]
            if len(index) and k > 0:
                chosen.append(positions[index[attention[index].topk(min(k, len(index))).indices]])
        return torch.cat(chosen) if chosen else torch.empty(0, dtype=torch.long, device=positions.device)

    def _update_importance(self, attention: torch.Tensor, positions: torch.Tensor, layout):
        """EMA of each visual token's normalised attention rank (1 = most attended)."""
        visual = torch.nonzero(layout.is_visual(positions))[:, 0]
        if len(visual) == 0:
            return
        ranks = (attention[visual].argsort().argsort().float() / max(len(visual) - 1, 1)).cpu()
        original = positions[visual].cpu()
        if self._importance is None:
            self._importance = torch.zeros(layout.seq_len)
            self._importance[original] = ranks
        else:
            alpha = self.options.ema_alpha
            self._importance[original] = (1 - alpha) * self._importance[original] + alpha * ranks

    def dynamic_layer_set(self, num_layers: int) -> set[int]:
        if not self.options.dynamic:
            return set()
        scaled = {round(int(layer) * num_layers / OFT_LAYERS) for layer in self.options.dynamic_layers}
        return {layer for layer in scaled if 2 <= layer < num_layers - 1}

    @staticmethod
    def _member(positions: torch.Tensor, members: torch.Tensor, length: int) -> torch.Tensor:
        """Boolean mask over ``positions``: which are in ``members`` (both original positions)."""
        table = torch.zeros(length, dtype=torch.bool, device=positions.device)
        table[members.to(positions.device)] = True
        return table[positions]

    # --- the interface -------------------------------------------------------

    def attention_layers(self, num_layers):
        self._num_layers = num_layers      # called once per forward, before layer 0
        return {0, 1} | self.dynamic_layer_set(num_layers)

    def before_llm(self, hidden, positions, layout, step, padding=None):
        self._importance = None
        self._static = self.static_candidates(step, layout) if step is not None else torch.empty(0, dtype=torch.long)
        if step is not None:
            step.report('input', len(positions))
        return None

    def after_layer(self, layer, hidden, positions, layout, step, attention):
        if attention is None or step is None:
            return None
        attention = attention.float()
        self._update_importance(attention, positions, layout)
        if layer in (0, 1):
            return self._static_stage(layer, attention, positions, layout, step)
        if layer in self.dynamic_layer_set(self._num_layers):
            return self._dynamic_stage(layer, positions, layout, step)
        return None

    def _static_stage(self, layer, attention, positions, layout, step):
        ks = self._topk_per_view(step.mode, layout.num_cameras)
        if layer == 0:
            ks = [k * self.options.layer0_topk_multiplier for k in ks]
        ks = [self._scaled(k, layout.patches_per_camera) for k in ks]
        important = self._attention_topk(attention, positions, layout, ks)
        history = self.previous_important if self.options.use_global_history else important[:0]
        length = layout.seq_len
        visual = layout.is_visual(positions)
        protected = self._member(positions, important, length) | self._member(positions, history, length)
        forced = self.options.forced_static_visual
        if forced is None:
            keep_mask = ~self._member(positions, self._static, length) | protected | ~visual
        else:
            keep_mask = self._forced_mask(forced, attention, positions, layout, protected)
        if layer == 1:
            self.previous_important = important.cpu()     # global history for the next inference
        keep = self._apply_floor(keep_mask, visual, attention)
        step.report(f'static_layer{layer}', len(keep))
        return PruneResult(keep=keep)

    def _forced_mask(self, count, attention, positions, layout, protected) -> torch.Tensor:
        """Exactly ``count`` visual tokens: history and top-k first, then attention, changed patches on ties."""
        visual = layout.is_visual(positions)
        changed = ~self._member(positions, self._static, layout.seq_len)
        score = attention + protected.float() + 1e-6 * changed.float()
        score[~visual] = -1.0
        keep_mask = ~visual
        keep_mask[score.topk(min(count, int(visual.sum()))).indices] = True
        return keep_mask

    def _dynamic_stage(self, layer, positions, layout, step):
        visual = layout.is_visual(positions)
        visual_index = torch.nonzero(visual)[:, 0]
        target = max(self.options.min_visual_tokens,
                     math.ceil(len(visual_index) * self.options.dynamic_keep_ratio))
        if target >= len(visual_index):
            step.report(f'dynamic_layer{layer}', len(positions))
            return None
        scores = self._importance[positions[visual_index].cpu()]
        kept_visual = visual_index[scores.topk(target).indices.to(visual_index.device)]
        keep = torch.cat([torch.nonzero(~visual)[:, 0], kept_visual]).sort().values
        step.report(f'dynamic_layer{layer}', len(keep))
        return PruneResult(keep=keep)

    def _apply_floor(self, keep_mask, visual, attention):
        """Never fewer than ``min_visual_tokens`` visual tokens: top up by attention."""
        missing = self.options.min_visual_tokens - int((keep_mask & visual).sum())
        if missing > 0:
            candidates = torch.nonzero(visual & ~keep_mask)[:, 0]
            keep_mask = keep_mask.clone()
            keep_mask[candidates[attention[candidates].topk(min(missing, len(candidates))).indices]] = True
        return torch.nonzero(keep_mask)[:, 0]


def patch_cosine_similarity(now: np.ndarray, before: np.ndarray, grid: int) -> np.ndarray:
    """Cosine similarity of raw-pixel patches on the encoder's grid, row-major, (grid*grid,)."""
    size = now.shape[0]
    patch = size // grid

    def patches(frame):
        cropped = frame[:grid * patch, :grid * patch].astype(np.float32)
        return cropped.reshape(grid, patch, grid, patch, -1).transpose(0, 2, 1, 3, 4).reshape(grid * grid, -1)

    a, b = patches(now), patches(before)
    denominator = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    # Two black patches are identical: similarity 1.
    return np.where(denominator > 0, dot / np.maximum(denominator, 1e-12), np.where(dot == 0, 1.0, 0.0))
