"""Floating-point operations of one forward pass, from the token count entering each layer.

Counts multiply-adds of the matrix products (2 FLOPs each), as
``torch.utils.flop_counter.FlopCounterMode`` does, so pruned and unpruned runs compare:
per LLM layer ``2 * params * tokens`` for projections and MLP plus ``4 * tokens^2 * hidden``
for attention scores and the weighted sum. Vision, projector, proprio and head are added.
"""
from __future__ import annotations

from dataclasses import dataclass

from .configuration_vla import VLAConfig


@dataclass
class FlopsBreakdown:
    vision: float
    projector: float
    llm: float
    head: float

    @property
    def total(self) -> float:
        return self.vision + self.projector + self.llm + self.head


def llm_layer_flops(config: VLAConfig, tokens: int) -> float:
    llm = config.llm
    hidden, inter = llm['hidden_size'], llm['intermediate_size']
    heads = llm['num_attention_heads']
    kv_heads = llm.get('num_key_value_heads') or heads
    head_dim = llm.get('head_dim') or hidden // heads
    projections = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2   # q, o and k, v
    mlp = 3 * hidden * inter
    attention = 4 * tokens * tokens * heads * head_dim
    return 2.0 * (projections + mlp) * tokens + attention


def vision_flops(config: VLAConfig) -> float:
    vision = config.vision
    patches = vision.patches_per_image
    total = 0.0
    for backbone in vision.backbones:
        d, m = backbone.hidden_size, backbone.intermediate_size
        tokens = patches + (1 + backbone.num_register_tokens if backbone.type == 'dinov2_reg' else 0)
        total += 2.0 * patches * 3 * vision.patch_size ** 2 * d                       # patch embedding
        per_block = 2.0 * tokens * (4 * d * d + 2 * d * m) + 4.0 * tokens * tokens * d
        total += per_block * (backbone.num_hidden_layers - 1)                         # second-to-last block
    return total * config.num_cameras


def projector_flops(config: VLAConfig) -> float:
    vin, h = config.vision.feature_dim, config.llm['hidden_size']
    per_token = vin * 4 * vin + 4 * vin * h + h * h if len(config.vision.backbones) == 2 else vin * h + h * h
    proprio = config.proprio_dim * h + h * h if config.proprio_dim else 0
    return 2.0 * (per_token * config.num_visual_tokens + proprio)


def head_flops(config: VLAConfig) -> float:
    h, a = config.llm['hidden_size'], config.action_dim
    per_step = a * h * h + config.head_num_blocks * h * h + h * a
    return 2.0 * per_step * config.chunk_len


def forward_flops(config: VLAConfig, layer_tokens: list[int]) -> FlopsBreakdown:
    return FlopsBreakdown(vision=vision_flops(config), projector=projector_flops(config),
                          llm=sum(llm_layer_flops(config, n) for n in layer_tokens), head=head_flops(config))


def sequence_length(config: VLAConfig, prompt_tokens: int) -> int:
    """Full sequence length: BOS + patches + proprio + prompt (incl. readout) + placeholders + stop."""
    return 1 + config.num_visual_tokens + int(config.proprio_dim > 0) + prompt_tokens + config.num_actions + 1
