"""Tiny models for tests: configs, models, tokenizers, camera frames and a fixed-choice pruner.

Everything here runs on a CPU in milliseconds. Import from a test as ``from model_fixtures import ...``
(pytest puts this directory on ``sys.path``).
"""
from __future__ import annotations

import numpy as np
import torch

from vla_prune_ros.model import VLAConfig, VLAModel
from vla_prune_ros.model.processing import normalize_proprio, pixel_values, prepare_image, prompt_ids
from vla_prune_ros.model.tokenizer import BOS_ID, EOS_ID, PAD_ID, READOUT_ID, build_word_tokenizer, prompt_words
from vla_prune_ros.pruning.base import PruneResult, PruningMethod

INSTRUCTIONS = ['touch the red cube', 'push the blue block to the left of the green bowl']


def tiny_config(**overrides) -> VLAConfig:
    """A fused DINOv2-reg + SigLIP model, 56 px images (16 patches per camera), 2-layer Llama of width 32.

    ``vision`` and ``llm`` overrides are merged into the defaults, other keys replace them.
    """
    data = dict(
        vision=dict(image_size=56, patch_size=14, backbones=[
            dict(type='dinov2_reg', hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, num_register_tokens=4, mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225)),
            dict(type='siglip', hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40)]),
        # A larger init than Llama's 0.02 so that attention is far from uniform and tests can tell variants apart.
        llm=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, initializer_range=0.2),
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, readout_token_id=READOUT_ID, pad_token_id=PAD_ID,
        action_norm=dict(q01=[-1.0] * 7, q99=[1.0] * 7), proprio_norm=dict(q01=[-1.0] * 8, q99=[1.0] * 8))
    for key, value in overrides.items():
        if key in ('vision', 'llm') and isinstance(value, dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return VLAConfig.from_dict(data)


def tiny_tokenizer(config: VLAConfig, instructions: list[str] = INSTRUCTIONS):
    return build_word_tokenizer(prompt_words(config.prompt_template, instructions))


def tiny_model_and_tokenizer(seed: int = 0, instructions: list[str] = INSTRUCTIONS, **overrides):
    """(model in eval mode, word tokenizer) for ``tiny_config(**overrides)``, weights drawn from ``seed``."""
    config = tiny_config(**overrides)
    torch.manual_seed(seed)
    model = VLAModel(config).eval()
    return model, tiny_tokenizer(config, instructions)


def random_frames(config: VLAConfig, seed: int = 0, size: int | None = None) -> list[np.ndarray]:
    """One random uint8 RGB frame per camera, ``size`` pixels square (default: the model's image size)."""
    rng = np.random.default_rng(seed)
    side = size or config.vision.image_size
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in config.camera_names]


def example_inputs(model: VLAModel, tokenizer, instruction: str = INSTRUCTIONS[0], seed: int = 0):
    """(pixel_values, proprio, prompt_ids) tensors for one observation, prepared as the policy does."""
    config = model.config
    rng = np.random.default_rng(seed)
    frames = [prepare_image(frame, config.vision.image_size, config.center_crop)
              for frame in random_frames(config, seed)]
    dtype = next(model.parameters()).dtype
    pixels = pixel_values(frames, config).to(dtype)
    proprio = None
    if config.proprio_dim:
        raw = rng.uniform(-1.0, 1.0, config.proprio_dim)
        proprio = torch.tensor(normalize_proprio(raw, config)[None], dtype=dtype)
    ids = torch.tensor([prompt_ids(tokenizer, instruction, config)], dtype=torch.long)
    return pixels, proprio, ids


class FixedKeep(PruningMethod):
    """Keeps chosen *original* positions of visual tokens: before layer 0 and/or after given layers.

    ``before_llm`` and each value of ``after`` are collections of original positions; visual tokens
    not listed are dropped (the model keeps non-visual tokens whatever a method returns).
    """
    name = 'fixed_keep'   # not registered: tests build it directly

    def __init__(self, before_llm=None, after: dict[int, list[int]] | None = None):
        super().__init__()
        self.keep_before = None if before_llm is None else set(int(p) for p in before_llm)
        self.keep_after = {layer: set(int(p) for p in kept) for layer, kept in (after or {}).items()}

    @staticmethod
    def _indices(positions: torch.Tensor, kept: set[int]) -> PruneResult:
        mask = torch.tensor([int(p) in kept for p in positions], dtype=torch.bool)
        return PruneResult(keep=torch.nonzero(mask)[:, 0])

    def before_llm(self, hidden, positions, layout, step, padding=None):
        return None if self.keep_before is None else self._indices(positions, self.keep_before)

    def after_layer(self, layer, hidden, positions, layout, step, attention):
        return self._indices(positions, self.keep_after[layer]) if layer in self.keep_after else None
