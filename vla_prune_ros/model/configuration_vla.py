"""Configuration of an OpenVLA-OFT-family policy.

A model *is* its config: the same code builds the 7B OFT model for a robot GPU and a
few-million-parameter model for CPU tests. Every dataclass validates itself in
``__post_init__`` and names the offending field, so a bad ``config.json`` fails at load.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

BACKBONE_TYPES = ('dinov2_reg', 'siglip')
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
OFT_PROMPT = 'In: What action should the robot take to {instruction}?\nOut:'


class ConfigError(ValueError):
    """A config field is missing, of the wrong type or out of range. The message names the field."""


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f'{field_name}: {message}')


_JSON_NAMES = {dict: 'an object', list: 'a list', tuple: 'a list', str: 'a string', int: 'an integer',
               float: 'a number', bool: 'true/false', type(None): 'null'}


def _require_type(value, types: tuple, field_name: str) -> None:
    """A config.json field of the wrong JSON type fails here, naming the field, not deep in a constructor."""
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        expected = ' or '.join(dict.fromkeys(_JSON_NAMES.get(t, 'an object') for t in types))
        raise ConfigError(f'{field_name}: must be {expected}, got {_JSON_NAMES.get(type(value), type(value).__name__)}')


def _require_list_of(value, element_types: tuple, field_name: str) -> None:
    _require_type(value, (list, tuple), field_name)
    for item in value:
        _require_type(item, element_types, f'{field_name}[]')


@dataclass
class BackboneConfig:
    """One ViT of the vision backbone. OFT fuses a DINOv2-with-registers and a SigLIP ViT."""
    type: str = 'siglip'
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 128
    num_register_tokens: int = 0          # DINOv2-reg uses 4
    layerscale_value: float = 1.0         # DINOv2 LayerScale init
    mean: tuple[float, ...] = SIGLIP_MEAN
    std: tuple[float, ...] = SIGLIP_STD

    def __post_init__(self):
        _require_type(self.type, (str,), 'vision.backbones[].type')
        for name in ('hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size',
                     'num_register_tokens'):
            _require_type(getattr(self, name), (int,), f'vision.backbones[].{name}')
        _require_type(self.layerscale_value, (int, float), 'vision.backbones[].layerscale_value')
        _require_list_of(self.mean, (int, float), 'vision.backbones[].mean')
        _require_list_of(self.std, (int, float), 'vision.backbones[].std')
        _require(self.type in BACKBONE_TYPES, 'vision.backbones[].type', f'{self.type!r} not in {BACKBONE_TYPES}')
        for name in ('hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size'):
            _require(isinstance(getattr(self, name), int) and getattr(self, name) > 0,
                     f'vision.backbones[].{name}', f'must be a positive int, got {getattr(self, name)!r}')
        _require(self.hidden_size % self.num_attention_heads == 0, 'vision.backbones[].hidden_size',
                 'must be divisible by num_attention_heads')
        # Features come from the second-to-last block (as OFT), so at least two blocks are needed.
        _require(self.num_hidden_layers >= 2, 'vision.backbones[].num_hidden_layers', 'must be >= 2')
        if self.type == 'dinov2_reg':   # transformers' DINOv2 takes an integer mlp_ratio
            _require(self.intermediate_size % self.hidden_size == 0, 'vision.backbones[].intermediate_size',
                     'must be a multiple of hidden_size for dinov2_reg')
        _require(self.num_register_tokens >= 0, 'vision.backbones[].num_register_tokens', 'must be >= 0')
        self.mean, self.std = tuple(float(x) for x in self.mean), tuple(float(x) for x in self.std)
        _require(len(self.mean) == 3 and len(self.std) == 3 and min(self.std) > 0,
                 'vision.backbones[].mean/std', 'need 3 values each, std > 0')


@dataclass
class VisionConfig:
    image_size: int = 224
    patch_size: int = 14
    backbones: list[BackboneConfig] = field(default_factory=lambda: [BackboneConfig()])
    # OFT+'s FiLM: the instruction's mean token embedding scales and shifts every ViT block's output,
    # so the patches can say "this is the cube the instruction names" before the LLM sees them.
    film: bool = False

    def __post_init__(self):
        _require_type(self.image_size, (int,), 'vision.image_size')
        _require_type(self.film, (bool,), 'vision.film')
        _require_type(self.patch_size, (int,), 'vision.patch_size')
        _require_type(self.backbones, (list, tuple), 'vision.backbones')
        for backbone in self.backbones:
            _require_type(backbone, (dict, BackboneConfig), 'vision.backbones[]')
        self.backbones = [b if isinstance(b, BackboneConfig) else _build(BackboneConfig, b, 'vision.backbones[]')
                          for b in self.backbones]
        _require(len(self.backbones) in (1, 2), 'vision.backbones', 'one ViT, or two fused (DINOv2 + SigLIP)')
        _require(self.patch_size > 0 and self.image_size > 0, 'vision.image_size', 'sizes must be positive')
        _require(self.image_size % self.patch_size == 0, 'vision.image_size',
                 f'{self.image_size} is not a multiple of patch_size {self.patch_size}')

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def patches_per_image(self) -> int:
        return self.grid ** 2

    @property
    def feature_dim(self) -> int:
        return sum(b.hidden_size for b in self.backbones)


@dataclass
class NormStats:
    """BOUNDS_Q99 statistics: a = 0.5 (a_hat + 1)(q99 - q01 + 1e-8) + q01 where mask is true."""
    q01: list[float]
    q99: list[float]
    mask: list[bool] | None = None

    def validate(self, name: str, dim: int) -> None:
        _require_list_of(self.q01, (int, float), f'norm_stats.{name}.q01')
        _require_list_of(self.q99, (int, float), f'norm_stats.{name}.q99')
        if self.mask is not None:
            _require_list_of(self.mask, (bool, int), f'norm_stats.{name}.mask')
        _require(len(self.q01) == dim and len(self.q99) == dim, f'norm_stats.{name}',
                 f'q01/q99 need {dim} values, got {len(self.q01)}/{len(self.q99)}')
        _require(all(math.isfinite(a) and math.isfinite(b) and b >= a for a, b in zip(self.q01, self.q99)),
                 f'norm_stats.{name}', 'q01/q99 must be finite with q99 >= q01')
        if self.mask is not None:
            _require(len(self.mask) == dim, f'norm_stats.{name}.mask', f'needs {dim} values')


@dataclass
class VLAConfig:
    """Everything needed to build the model. Serialised as ``config.json`` in a checkpoint."""
    camera_names: list[str] = field(default_factory=lambda: ['primary', 'wrist'])
    vision: VisionConfig = field(default_factory=VisionConfig)
    # Llama config kwargs for transformers.LlamaConfig (hidden_size, num_hidden_layers, ...).
    llm: dict[str, Any] = field(default_factory=lambda: dict(
        vocab_size=256, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6))
    proprio_dim: int = 8                  # 0 disables the proprio token
    action_dim: int = 7
    chunk_len: int = 8
    action_names: list[str] = field(default_factory=lambda: ['dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper'])
    head_num_blocks: int = 2
    prompt_template: str = OFT_PROMPT
    bos_token_id: int = 1
    eos_token_id: int = 2                 # the trailing stop token '</s>'
    readout_token_id: int = 3             # appended after the prompt; Llama's '▁' is 29871 (OFT)
    pad_token_id: int = 0
    causal: bool = False                  # OFT fine-tunes with full bidirectional attention
    center_crop: bool = True
    attn_implementation: str = 'sdpa'     # 'sdpa' or 'eager'
    action_norm: NormStats | None = None
    proprio_norm: NormStats | None = None

    def __post_init__(self):
        _require_type(self.vision, (dict, VisionConfig), 'vision')
        _require_type(self.llm, (dict,), 'llm')
        _require_list_of(self.camera_names, (str,), 'camera_names')
        _require_list_of(self.action_names, (str,), 'action_names')
        _require_type(self.prompt_template, (str,), 'prompt_template')
        _require_type(self.attn_implementation, (str,), 'attn_implementation')
        for name in ('proprio_dim', 'action_dim', 'chunk_len', 'head_num_blocks', 'bos_token_id', 'eos_token_id',
                     'readout_token_id', 'pad_token_id'):
            _require_type(getattr(self, name), (int,), name)
        for name in ('causal', 'center_crop'):
            _require_type(getattr(self, name), (bool,), name)
        if isinstance(self.vision, dict):
            self.vision = _build(VisionConfig, self.vision, 'vision')
        for name in ('action_norm', 'proprio_norm'):
            value = getattr(self, name)
            _require_type(value, (dict, NormStats, type(None)), name)
            if isinstance(value, dict):
                setattr(self, name, _build(NormStats, value, name))
        _require(len(self.camera_names) >= 1, 'camera_names', 'need at least one camera')
        _require(len(set(self.camera_names)) == len(self.camera_names), 'camera_names', 'must be unique')
        for name in ('action_dim', 'chunk_len', 'head_num_blocks'):
            _require(isinstance(getattr(self, name), int) and getattr(self, name) > 0, name, 'must be a positive int')
        _require(isinstance(self.proprio_dim, int) and self.proprio_dim >= 0, 'proprio_dim', 'must be an int >= 0')
        _require(len(self.action_names) == self.action_dim, 'action_names', f'needs {self.action_dim} names')
        _require('{instruction}' in self.prompt_template, 'prompt_template', "must contain '{instruction}'")
        _require(self.attn_implementation in ('sdpa', 'eager'), 'attn_implementation', "must be 'sdpa' or 'eager'")
        for key in ('hidden_size', 'num_hidden_layers', 'num_attention_heads', 'vocab_size', 'intermediate_size'):
            _require(isinstance(self.llm.get(key), int) and self.llm[key] > 0, f'llm.{key}', 'must be a positive int')
        _require(self.llm['hidden_size'] % self.llm['num_attention_heads'] == 0, 'llm.hidden_size',
                 'must be divisible by num_attention_heads')
        for name in ('bos_token_id', 'eos_token_id', 'readout_token_id', 'pad_token_id'):
            value = getattr(self, name)
            _require(0 <= value < self.llm['vocab_size'], name, f'{value} outside the vocabulary')
        if self.action_norm is not None:
            self.action_norm.validate('action', self.action_dim)
        if self.proprio_norm is not None:
            self.proprio_norm.validate('proprio', self.proprio_dim)

    @property
    def num_cameras(self) -> int:
        return len(self.camera_names)

    @property
    def num_actions(self) -> int:
        return self.chunk_len * self.action_dim

    @property
    def num_visual_tokens(self) -> int:
        return self.num_cameras * self.vision.patches_per_image

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> 'VLAConfig':
        if not isinstance(data, dict):
            raise ConfigError(f'config: must be a JSON object, got {_JSON_NAMES.get(type(data), type(data).__name__)}')
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f'{sorted(unknown)[0]}: unknown config field')
        return _build(cls, data, 'config')


def _build(cls, data: dict, field_name: str):
    """``cls(**data)``; unknown or missing keys become a ConfigError naming the field."""
    try:
        return cls(**data)
    except ConfigError:
        raise
    except TypeError as error:  # e.g. an unknown key inside vision.backbones
        raise ConfigError(f'{field_name}: {error}') from None
