"""SpecPrune-VLA: training-free, two-level token pruning (action level + layer level).

Static pruning (once per inference, progressive over layers 0 and 1), per view:

* **Frame change.** Raw-pixel patches on the encoder's grid of the frames resized to the model's
  input (before the centre crop, as the released code compares them) are compared (cosine
  similarity) with the frame Δ control steps back; up to ``static_cap`` of the most similar patches above
  ``similarity_threshold`` are static candidates. Δ follows the released code's formula,
  ``int(slope v + intercept) + offset``, clipped to [``delta_min``, ``delta_max``]; the frame
  comes from the policy's ring of frames at the control rate (``VLAPolicy.observe_frames``).
* **Attention.** After layer 0 the top 3k patches by attention from the **instruction's own
  tokens** (the prompt rows after the fixed template, readout included) survive; after layer 1
  the top k, and layer 0's first k stay protected too.
* **Global history** (the paper uses it; the released code leaves it an empty list): the
  previous inference's layer-1 top-k set is always kept.

Dynamic pruning (layer level): a per-token importance, an EMA (α = 0.2, starting from zero) of
each visual token's normalised attention rank, where the attention comes from **every row after
the patches** (proprio, prompt, readout, action placeholders, ``</s>``), updated at
``importance_layers`` (code: {0, 1, 12}); at ``dynamic_layers`` (code: {5, 10, 15, 20, 25}) the top
``dynamic_keep_ratio`` of the remaining visual tokens survive. Layers are given for a 32-layer
LLM and scaled to the model's depth; caps and top-k per 256 patches per view, scaled likewise.

Deviations from the released code, each on purpose:

* **Δ counts control steps back directly** (``offset`` 2, ``delta_max`` 5): the code indexes its
  frame list with ``-prev_T`` where ``-1`` is the current frame, i.e. ``prev_T - 1`` steps back
  (1-5); ``prev_T = 1`` (only at speeds far above any measured) would compare a frame with itself,
  so at least 1 step back here. Its ``v`` is the norm of the previous chunk's summed normalised
  translation; here ``v = delta_speed_scale · |measured TCP speed| + delta_speed_offset``, with the
  defaults chosen from the simulated arm's measured speeds (``benchmarks/speed_traces.json``: 5th
  to 95th percentile 0.02-0.16 m/s) so that Δ spans 5..1 over that range. For another robot:
  ``scale = 4.8 / (v95 - v05)``, ``offset = 4.8 - scale · v05``.
  Without a ring (a caller that never calls ``observe_frames``) the previous inference's frames
  are the comparison; with fewer frames than Δ, the oldest held. With no earlier frame at all (an
  episode's first inference) nothing counts as static; the code then compares the frame with
  itself, which marks every patch static up to the cap.
* **Fixed-size cuts, no device syncs.** Every cut keeps a count known on the host: per view
  ``|changed ∪ history| + 3k`` after layer 0 and ``|changed ∪ history| + 2k`` after layer 1 (capped
  at the view). Where the attention top-k overlaps the protected set the code keeps fewer tokens;
  here the free slots go to the next most attended patches, so the kept set is a superset of the
  code's. The floor ``min_visual_tokens`` is split evenly over the views.
* **Fine keeps at least what coarse keeps** (the paper's rule; the released caps 220 fine > 200
  coarse invert it in static scenes): fine uses ``min(static_cap_fine, static_cap_coarse)`` and
  ``max(topk_fine, topk_coarse)`` per view, so every count is at least coarse's at every layer.
* **Dynamic pruning** (code: off by default; paper: on) is on by default here and a parameter.
* **The template skip is derived, not fixed**: the instruction rows start after as many prompt
  tokens as the template "In: What action should the robot take to" tokenises to
  (``processing.template_tokens``; the released code skips a fixed 10, tied to its tokenizer and
  layout). They end at the readout token, so the "?\nOut:" suffix is included.
* One observation per call: the frame history is one robot's, so batches are refused.
* ``forced_static_visual`` forces the static stage to keep exactly that many visual tokens (the
  papers' operating point, for the benchmark): protected first, then attention, changed on ties.
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
PROTECT = 2.0       # added to attention probabilities (<= 1) so protected tokens rank first


@dataclass(frozen=True)
class SpecPruneOptions(Options):
    """Caps and top-k are per view and per 256 patches, layers for a 32-layer LLM; both are scaled to the model."""
    prefix: ClassVar[str] = 'specprune'

    similarity_threshold: float = option(
        0.986, 'Cosine similarity above which a patch counts as unchanged (static).', low=0.0, high=1.0)
    static_cap_coarse: int = option(200, 'Max static patches per view (per 256), coarse mode.',
                                    low=0, high=OFT_PATCHES_PER_VIEW)
    static_cap_fine: int = option(200, 'Max static patches per view (per 256), fine mode (at most the coarse cap).',
                                  low=0, high=OFT_PATCHES_PER_VIEW)
    topk_coarse: tuple[int, ...] = option(
        (16, 12), 'Attention top-k per view (primary, wrist, ...; per 256 patches), coarse mode.',
        low=0, high=OFT_PATCHES_PER_VIEW, min_length=1)
    topk_fine: tuple[int, ...] = option((25, 19), 'Attention top-k per view (per 256 patches), fine mode '
                                                  '(at least the coarse top-k).',
                                        low=0, high=OFT_PATCHES_PER_VIEW, min_length=1)
    layer0_topk_multiplier: int = option(3, 'After layer 0 keep multiplier * k per view.', low=1, high=64)
    delta_slope: float = option(-16.0 / 18.0, 'Frame gap formula: slope on the speed.', low=-1e3, high=1e3)
    delta_intercept: float = option(22.0 / 3.0, 'Frame gap formula: intercept.', low=-1e3, high=1e3)
    delta_offset: int = option(2, 'Frame gap formula: offset (control steps).', low=-1000, high=1000)
    delta_max: int = option(5, 'Largest frame gap (control steps back).', low=1, high=15)
    delta_min: int = option(1, 'Smallest frame gap (control steps back).', low=1, high=15)
    delta_speed_scale: float = option(34.0, 'Frame gap formula speed: scale on the measured speed (per m/s).',
                                      low=0.0, high=1e6)
    delta_speed_offset: float = option(4.1, 'Frame gap formula speed: offset added after scaling.',
                                       low=-1e6, high=1e6)
    use_global_history: bool = option(True, "Always keep the previous inference's important patches.")
    dynamic: bool = option(True, 'Layer-level (dynamic) pruning inside the LLM.')
    importance_layers: tuple[int, ...] = option(
        (0, 1, 12), 'Layers (of a 32-layer LLM, scaled) whose attention updates the importance EMA.',
        low=0, high=1024)
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
        self.frame_history: deque[list[np.ndarray]] = deque(maxlen=2)   # without a ring: earlier inferences
        self.previous_important = torch.empty(0, dtype=torch.long)         # original positions
        self._num_layers = OFT_LAYERS
        self._importance_layers: set[int] = set()
        self._state: _InferenceState | None = None

    # --- per-inference rules (host) ------------------------------------------------

    def delta_steps(self, speed: float | None) -> int:
        """Control steps back to the frame compared with, from the measured speed (m/s)."""
        o = self.options
        if speed is None or not math.isfinite(speed):
            return o.delta_max
        v = abs(speed) * o.delta_speed_scale + o.delta_speed_offset
        delta = int(o.delta_slope * v + o.delta_intercept) + o.delta_offset
        return max(o.delta_min, min(delta, o.delta_max))

    def _scaled(self, count: float, patches_per_view: int) -> int:
        return int(round(count * patches_per_view / OFT_PATCHES_PER_VIEW))

    def topk_per_view(self, mode: str, num_views: int) -> list[int]:
        """Per-view top-k (per 256 patches); fine never below coarse."""
        def per_view(ks):
            return [ks[min(i, len(ks) - 1)] for i in range(num_views)]
        coarse = per_view(self.options.topk_coarse)
        if mode != 'fine':
            return coarse
        return [max(f, c) for f, c in zip(per_view(self.options.topk_fine), coarse)]

    def static_cap(self, mode: str) -> int:
        o = self.options
        return min(o.static_cap_fine, o.static_cap_coarse) if mode == 'fine' else o.static_cap_coarse

    def _reference_frames(self, step: InferenceStep) -> list[np.ndarray] | None:
        if step.earlier_frames is not None:
            return step.earlier_frames(self.delta_steps(step.ee_speed))
        reference = self.frame_history[-1] if self.frame_history else None
        self.frame_history.append(step.frames)
        return reference

    def static_patches(self, step: InferenceStep, layout) -> list[np.ndarray]:
        """Per view, patch ids (0-based in the view) that did not change since the reference frame (capped)."""
        reference = self._reference_frames(step)
        if reference is None:
            return [np.empty(0, dtype=np.int64)] * layout.num_cameras
        cap = self._scaled(self.static_cap(step.mode), layout.patches_per_camera)
        grid = int(math.isqrt(layout.patches_per_camera))
        static = []
        for now, before in zip(step.frames, reference):
            similarity = patch_cosine_similarity(now, before, grid)
            most_similar = np.argsort(-similarity, kind='stable')[:cap]
            static.append(np.sort(most_similar[similarity[most_similar] > self.options.similarity_threshold]))
        return static

    def scaled_layers(self, layers, num_layers: int) -> set[int]:
        return {round(int(layer) * num_layers / OFT_LAYERS) for layer in layers}

    def dynamic_layer_set(self, num_layers: int) -> set[int]:
        if not self.options.dynamic:
            return set()
        return {layer for layer in self.scaled_layers(self.options.dynamic_layers, num_layers)
                if 2 <= layer < num_layers - 1}

    # --- the interface -------------------------------------------------------

    def attention_layers(self, num_layers):
        self._num_layers = num_layers      # called once per forward, before layer 0
        self._importance_layers = set()
        if self.options.dynamic:
            self._importance_layers = {layer for layer in self.scaled_layers(self.options.importance_layers,
                                                                             num_layers) if layer < num_layers - 1}
        return {0, 1} | self._importance_layers

    def before_llm(self, hidden, positions, layout, step, padding=None):
        if hidden.shape[0] != 1:
            raise ValueError(f'specprune: one observation per call (its frame history is one robot\'s), '
                             f'got a batch of {hidden.shape[0]}')
        self._state = None
        if step is None:
            return None
        step.report('input', len(positions))
        device = hidden.device
        views = layout.num_cameras
        static = self.static_patches(step, layout)
        protected = np.zeros(layout.seq_len, dtype=bool)        # changed patches and the global history
        changed = np.zeros(layout.seq_len, dtype=bool)
        for view, ids in enumerate(static):
            span = layout.camera_range(view)
            changed[span.start:span.stop] = True
            changed[span.start + ids] = False
        history = np.zeros(layout.seq_len, dtype=bool)
        if self.options.use_global_history and len(self.previous_important):
            history[self.previous_important.cpu().numpy()] = True    # the last inference is long finished
        protected |= changed | history
        per_view = [int(protected[r.start:r.stop].sum()) for r in map(layout.camera_range, range(views))]
        self._state = _InferenceState(
            protected=torch.from_numpy(protected).to(device), changed=torch.from_numpy(changed).to(device),
            history=torch.from_numpy(history).to(device),
            protected_per_view=per_view, present_per_view=[layout.patches_per_camera] * views,
            importance=torch.zeros(layout.seq_len, device=device), layer0_top=None)
        return None

    def after_layer(self, layer, hidden, positions, layout, step, attention):
        state = self._state
        if step is None or state is None:
            return None
        if attention is not None:
            attention = attention[0].float()                          # (rows after the patches, tokens)
            if layer in self._importance_layers:
                self._update_importance(attention.mean(dim=0), positions, state)
            if layer in (0, 1):
                rows = slice(layout.prompt_start + step.template_tokens - layout.patch_end,
                             layout.readout_index + 1 - layout.patch_end)     # the instruction's own rows
                return self._static_stage(layer, attention[rows].mean(dim=0), positions, layout, step, state)
        if layer in self.dynamic_layer_set(self._num_layers):
            return self._dynamic_stage(layer, positions, layout, step, state)
        return None

    # --- stages (device work of host-known size) --------------------------------

    def _update_importance(self, row_mean: torch.Tensor, positions, state) -> None:
        """EMA (from zero) of each present visual token's normalised rank (1 = most attended)."""
        count = state.visual_present
        if count < 1:
            return
        ranks = row_mean[1:1 + count].argsort().argsort().float() / max(count - 1, 1)
        original = positions[1:1 + count]
        alpha = self.options.ema_alpha
        state.importance[original] = (1 - alpha) * state.importance[original] + alpha * ranks

    @staticmethod
    def _keep(chosen_original, positions, layout) -> PruneResult:
        """The cut keeping the chosen visual tokens (original positions), as current indices: kept tokens
        stay in their original order, so ``positions`` is ascending and one search finds them."""
        return PruneResult(keep_visual=torch.searchsorted(positions, chosen_original))

    def _static_stage(self, layer, instruction, positions, layout, step, state):
        views, per_view = layout.num_cameras, layout.patches_per_camera
        ks = [self._scaled(k, per_view) for k in self.topk_per_view(step.mode, views)]
        full = torch.full((layout.seq_len,), -1.0, device=positions.device)   # -1: not present
        full[positions] = instruction
        # The attention top-k per view (original positions): the history the next inference keeps
        # (layer 1) and the protection layer 1 keeps (layer 0).
        top = torch.cat([full[layout.camera_range(v).start:layout.camera_range(v).stop].topk(
            min(k, per_view)).indices + layout.camera_range(v).start for v, k in enumerate(ks)])
        if layer == 1:
            self.previous_important = top
        forced = self.options.forced_static_visual
        if forced is not None:
            return self._forced_stage(layer, full, top, ks, positions, layout, step, state, forced)
        priority = full + PROTECT * state.protected.float()
        multiplier = self.options.layer0_topk_multiplier if layer == 0 else 2
        if layer == 1:
            priority[state.layer0_top] += PROTECT
        floor = math.ceil(self.options.min_visual_tokens / views)
        counts = [min(present, max(protected + multiplier * k, floor)) for present, protected, k in
                  zip(state.present_per_view, state.protected_per_view, ks)]
        if layer == 0:
            state.layer0_top = top
        step.report(f'static_layer{layer}', len(positions) - sum(state.present_per_view) + sum(counts))
        if counts == state.present_per_view:
            return None
        chosen = torch.cat([priority[layout.camera_range(v).start:layout.camera_range(v).stop].topk(count).indices
                            + layout.camera_range(v).start for v, count in enumerate(counts)])
        state.present_per_view = counts
        return self._keep(chosen, positions, layout)

    def _forced_stage(self, layer, full, top, ks, positions, layout, step, state, count):
        """Exactly ``count`` visual tokens after layer 0 (protected first, attention, changed on ties)."""
        visual = slice(layout.patch_start, layout.patch_end)
        present = sum(state.present_per_view)
        count = min(count, present)
        step.report(f'static_layer{layer}', len(positions) - present + count)
        if layer == 1 or count == present:
            return None
        if layer == 0:
            top3k = torch.cat([full[layout.camera_range(v).start:layout.camera_range(v).stop].topk(
                min(self.options.layer0_topk_multiplier * k, layout.patches_per_camera)).indices
                + layout.camera_range(v).start for v, k in enumerate(ks)])
            protected = state.history.clone()
            protected[top3k] = True
            score = full + protected.float() + 1e-6 * state.changed.float()
        chosen = score[visual].topk(count).indices + layout.patch_start
        state.present_per_view = [count]            # per-view counts no longer matter after the static stage
        return self._keep(chosen, positions, layout)

    def _dynamic_stage(self, layer, positions, layout, step, state):
        present = state.visual_present
        target = max(self.options.min_visual_tokens, math.ceil(present * self.options.dynamic_keep_ratio))
        if target >= present:
            step.report(f'dynamic_layer{layer}', len(positions))
            return None
        scores = state.importance[positions[1:1 + present]]
        chosen = positions[1 + scores.topk(target).indices]
        state.present_per_view = [target]
        step.report(f'dynamic_layer{layer}', len(positions) - present + target)
        return self._keep(chosen, positions, layout)


@dataclass
class _InferenceState:
    """What one inference's stages share; every count is a host int."""
    protected: torch.Tensor            # (seq_len,) bool: changed patches and the global history
    changed: torch.Tensor              # (seq_len,) bool
    history: torch.Tensor              # (seq_len,) bool: the previous inference's important set
    protected_per_view: list[int]
    present_per_view: list[int]        # visual tokens present per view (one entry after per-view stages)
    importance: torch.Tensor           # (seq_len,) EMA of attention ranks, from zero
    layer0_top: torch.Tensor | None    # original positions of layer 0's per-view top-k

    @property
    def visual_present(self) -> int:
        return sum(self.present_per_view)


def patch_cosine_similarity(now: np.ndarray, before: np.ndarray, grid: int) -> np.ndarray:
    """Cosine similarity of raw-pixel patches on the encoder's grid, row-major, (grid*grid,)."""
    patch = now.shape[0] // grid
    span = grid * patch
    # Sums over each patch's rows, columns and channels of the (grid, patch, grid, patch, C) view:
    # no transposed copy of the frame (a third of the time at 224 px).
    a = now[:span, :span].reshape(grid, patch, grid, patch, -1).astype(np.float32)
    b = before[:span, :span].reshape(grid, patch, grid, patch, -1).astype(np.float32)

    def patch_sums(x, y):
        return np.einsum('ipjqc,ipjqc->ij', x, y).ravel()

    dot = patch_sums(a, b)
    denominator = np.sqrt(patch_sums(a, a)) * np.sqrt(patch_sums(b, b))
    # Two black patches are identical: similarity 1.
    return np.where(denominator > 0, dot / np.maximum(denominator, 1e-12), np.where(dot == 0, 1.0, 0.0))
