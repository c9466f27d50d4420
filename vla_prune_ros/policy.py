"""The policy the node, the simulator demo, ``eval`` and ``bench`` call: checkpoint + pruning method.

Plain Python and torch; no ROS. One call = one observation in, one un-normalised action
chunk out, with the token counts, FLOPs and a latency split of that call.
"""
from __future__ import annotations

import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .model.checkpoint import load_checkpoint
from .model.flops import forward_flops
from .model.modeling_vla import ForwardTrace, VLAModel
from .model.processing import (normalize_proprio, pixel_values, prepare_image, prompt_ids, template_tokens,
                               unnormalize_actions)
from .pruning import InferenceStep, create_method


@dataclass
class InferenceRecord:
    method: str
    mode: str
    tokens_total: int
    visual_tokens_total: int
    tokens_kept: int                    # mean tokens per LLM layer: what the LLM's cost scales with
    tokens_into_llm: int                # tokens entering the first LLM layer
    visual_tokens_kept: int             # visual tokens entering the last LLM layer
    stages: list[tuple[str, int]]
    layer_tokens: list[int]
    flops: float
    flops_unpruned: float
    timings: dict[str, float] = field(default_factory=dict)   # preprocess, vision, llm, head, total


@dataclass
class PolicyOutput:
    actions: np.ndarray                 # (chunk_len, action_dim), un-normalised
    normalized_actions: np.ndarray
    record: InferenceRecord


FRAME_RING = 16     # control steps of camera frames kept for methods that compare with earlier frames


class VLAPolicy:
    """``observe_frames`` once per control step (the camera frames the robot sees then) lets a method
    compare with the frame a number of control steps back (SpecPrune's Δ); ``infer`` when a chunk is
    needed."""

    def __init__(self, model: VLAModel, tokenizer, method: str = 'none', method_options: dict | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = model.config
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.method = create_method(method, **(method_options or {}))
        self._prompt_cache: dict[str, tuple[torch.Tensor, int]] = {}
        self._ring: deque[list] = deque(maxlen=FRAME_RING)      # [raw frames, resized frames or None]
        self._observed = False          # observe_frames called since reset: the ring is in use
        self.method_warning = ''        # why the method runs other than asked (missing weights)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = 'cpu', dtype: str = 'float32',
                        method: str = 'none', method_options: dict | None = None,
                        attn_implementation: str | None = None) -> 'VLAPolicy':
        model, tokenizer = load_checkpoint(checkpoint, device=device, dtype=dtype,
                                           attn_implementation=attn_implementation)
        policy = cls(model, tokenizer, method, method_options)
        policy.load_method_weights(Path(checkpoint))
        return policy

    # --- method management ----------------------------------------------------

    def set_method(self, name: str, **options) -> None:
        """Switch method (applies from the next call). Raises ValueError on a bad name or option."""
        method = create_method(name, **options)
        self.method = method
        self.load_method_weights(getattr(self, '_checkpoint_dir', None))

    def load_method_weights(self, directory: Path | None) -> None:
        self._checkpoint_dir = directory
        self.method_warning = ''
        module = self.method.trainable_module()
        if module is None or directory is None:
            return
        path = Path(directory) / f'pruner_{self.method.name}.safetensors'
        if path.is_file():
            from safetensors.torch import load_file
            module.load_state_dict(load_file(str(path)))
            self.method.weights_loaded(path)
        else:
            self.method_warning = self.method.missing_weights_reason(path)
            if self.method_warning:
                warnings.warn(self.method_warning, stacklevel=2)
        module.to(self.device, self.dtype)

    def method_refusal(self, name: str) -> str:
        """Why method ``name`` should not run with this checkpoint ('' when it may): a node refuses it."""
        from .pruning import METHODS, available_methods
        available_methods()
        if name not in METHODS or self._checkpoint_dir is None:
            return ''
        method = METHODS[name]()
        if method.trainable_module() is None:
            return ''
        path = Path(self._checkpoint_dir) / f'pruner_{name}.safetensors'
        return '' if path.is_file() else method.missing_weights_reason(path)

    def method_refusals(self) -> tuple[tuple[str, str], ...]:
        """(method, reason) for every registered method this checkpoint cannot run as asked."""
        from .pruning import available_methods
        return tuple((name, reason) for name in available_methods() if (reason := self.method_refusal(name)))

    def reset(self) -> None:
        """New episode: forget per-episode pruning state and the frame ring."""
        self.method.reset()
        self._ring.clear()
        self._observed = False

    def observe_frames(self, images: list[np.ndarray]) -> None:
        """The camera frames (model order) of one control step; call every step, before ``infer``."""
        self._ring.append([list(images), None])
        self._observed = True

    def _earlier_frames(self, steps: int) -> list[np.ndarray] | None:
        """Resized (uncropped) frames ``steps`` control steps before the newest observed (the oldest held if fewer)."""
        if len(self._ring) < 2:
            return None
        entry = self._ring[-1 - min(max(int(steps), 1), len(self._ring) - 1)]
        if entry[1] is None:
            entry[1] = [prepare_image(image, self.config.vision.image_size, False) for image in entry[0]]
        return entry[1]

    # --- inference --------------------------------------------------------------

    def _prompt(self, instruction: str) -> torch.Tensor:
        return self._prompt_and_template(instruction)[0]

    def _prompt_and_template(self, instruction: str) -> tuple[torch.Tensor, int]:
        if instruction not in self._prompt_cache:
            ids = prompt_ids(self.tokenizer, instruction, self.config)
            self._prompt_cache[instruction] = (torch.tensor([ids], dtype=torch.long, device=self.device),
                                               template_tokens(self.tokenizer, instruction, self.config))
        return self._prompt_cache[instruction]

    def warmup(self) -> None:
        size = self.config.vision.image_size
        frames = [np.zeros((size, size, 3), dtype=np.uint8) for _ in self.config.camera_names]
        self.infer(frames, np.zeros(self.config.proprio_dim), 'warm up')
        self.reset()

    @torch.inference_mode()
    def infer(self, images: list[np.ndarray], proprio: np.ndarray | None, instruction: str,
              mode: str = 'coarse', ee_speed: float | None = None) -> PolicyOutput:
        config = self.config
        if len(images) != config.num_cameras:
            raise ValueError(f'expected {config.num_cameras} images ({config.camera_names}), got {len(images)}')
        start = time.perf_counter()
        # Resized to the model's size; the centre crop follows. Frame comparisons use the uncropped ones.
        resized = [prepare_image(image, config.vision.image_size, False) for image in images]
        frames = [prepare_image(image, config.vision.image_size, config.center_crop) for image in resized]
        pixels = pixel_values(frames, config).to(self.device, self.dtype)
        proprio_tensor = None
        if config.proprio_dim:
            if proprio is None or len(proprio) != config.proprio_dim:
                raise ValueError(f'expected proprio of {config.proprio_dim} values')
            proprio_tensor = torch.tensor(normalize_proprio(proprio, config)[None], device=self.device,
                                          dtype=self.dtype)
        ids, template = self._prompt_and_template(instruction)
        trace = ForwardTrace()
        if self._observed:      # these are the newest observed frames: keep their prepared copies
            self._ring[-1][1] = resized
        step = InferenceStep(frames=resized, mode=mode, ee_speed=ee_speed, template_tokens=template,
                             earlier_frames=self._earlier_frames if self._observed else None)
        preprocess = time.perf_counter() - start
        normalized = self.model(pixels, proprio_tensor, ids, pruner=self.method, step=step, trace=trace)
        normalized = normalized[0].float().cpu().numpy().astype(np.float64)
        actions = unnormalize_actions(normalized, config)
        timings = {'preprocess': preprocess, **trace.timings, 'pruning': trace.pruning_time}
        timings['total'] = time.perf_counter() - start
        layout = self.model.layout(ids.shape[1] - 1)
        full_length = layout.seq_len
        record = InferenceRecord(
            method=self.method.name, mode=mode, tokens_total=full_length,
            visual_tokens_total=config.num_visual_tokens,
            tokens_kept=round(sum(trace.layer_tokens) / len(trace.layer_tokens)),
            tokens_into_llm=trace.layer_tokens[0],
            visual_tokens_kept=int(np.count_nonzero(layout.is_visual(trace.kept_positions.cpu().numpy()))),
            stages=step.stages, layer_tokens=trace.layer_tokens,
            flops=forward_flops(config, trace.layer_tokens).total,
            flops_unpruned=forward_flops(config, [full_length] * len(trace.layer_tokens)).total,
            timings=timings)
        return PolicyOutput(actions=actions, normalized_actions=normalized, record=record)
