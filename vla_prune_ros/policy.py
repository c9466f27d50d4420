"""The policy the node, the simulator demo, ``eval`` and ``bench`` call: checkpoint + pruning method.

Plain Python and torch; no ROS. One call = one observation in, one un-normalised action
chunk out, with the token counts, FLOPs and a latency split of that call.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .model.checkpoint import load_checkpoint
from .model.flops import forward_flops
from .model.modeling_vla import ForwardTrace, VLAModel
from .model.processing import normalize_proprio, pixel_values, prepare_image, prompt_ids, unnormalize_actions
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


class VLAPolicy:
    def __init__(self, model: VLAModel, tokenizer, method: str = 'none', method_options: dict | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = model.config
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.method = create_method(method, **(method_options or {}))
        self._prompt_cache: dict[str, torch.Tensor] = {}

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
        module = self.method.trainable_module()
        if module is None or directory is None:
            return
        path = Path(directory) / f'pruner_{self.method.name}.safetensors'
        if path.is_file():
            from safetensors.torch import load_file
            module.load_state_dict(load_file(str(path)))
        module.to(self.device, self.dtype)

    def reset(self) -> None:
        """New episode: forget per-episode pruning state."""
        self.method.reset()

    # --- inference --------------------------------------------------------------

    def _prompt(self, instruction: str) -> torch.Tensor:
        if instruction not in self._prompt_cache:
            ids = prompt_ids(self.tokenizer, instruction, self.config)
            self._prompt_cache[instruction] = torch.tensor([ids], dtype=torch.long, device=self.device)
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
        frames = [prepare_image(image, config.vision.image_size, config.center_crop) for image in images]
        pixels = pixel_values(frames, config).to(self.device, self.dtype)
        proprio_tensor = None
        if config.proprio_dim:
            if proprio is None or len(proprio) != config.proprio_dim:
                raise ValueError(f'expected proprio of {config.proprio_dim} values')
            proprio_tensor = torch.tensor(normalize_proprio(proprio, config)[None], device=self.device,
                                          dtype=self.dtype)
        ids = self._prompt(instruction)
        trace = ForwardTrace()
        step = InferenceStep(frames=frames, mode=mode, ee_speed=ee_speed)
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
            visual_tokens_kept=int(layout.is_visual(trace.kept_positions).sum()),
            stages=step.stages, layer_tokens=trace.layer_tokens,
            flops=forward_flops(config, trace.layer_tokens).total,
            flops_unpruned=forward_flops(config, [full_length] * len(trace.layer_tokens)).total,
            timings=timings)
        return PolicyOutput(actions=actions, normalized_actions=normalized, record=record)
