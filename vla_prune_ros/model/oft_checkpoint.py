"""Loading checkpoints in the published OpenVLA-OFT layout (prismatic names) into ``VLAModel``.

An OFT checkpoint directory holds:

* ``config.json`` of prismatic's ``OpenVLAConfig``: ``vision_backbone_id``, ``llm_backbone_id``,
  ``timm_model_ids``, ``image_sizes``, ``use_fused_vision_backbone``, ``text_config`` (Llama),
  ``pad_token_id`` (32000) and ``norm_stats``;
* the VLM weights in ``model.safetensors`` or shards listed in ``model.safetensors.index.json``;
* ``action_head--<step>_checkpoint.pt`` and optionally ``proprio_projector--<step>_checkpoint.pt``
  (plain ``torch.save`` state dicts, with ``module.`` prefixes when trained under DDP);
* ``dataset_statistics.json`` (``{unnorm_key: {action: {q01, q99, mask}, proprio: {...}}}``);
* Llama's tokenizer files.

What the files do not say is read from the weights (ViT widths, depths, registers, patch
size, action dimension, head depth, proprio dimension) or from an optional small sidecar
``vla_prune_ros.json`` with any of ``chunk_len`` (default 8, OFT's LIBERO value),
``camera_names`` (wins over the ``num_cameras`` argument), ``vision_num_heads`` (needed only
for ViTs of non-standard width), ``unnorm_key`` and ``center_crop``.

Name mapping (timm / prismatic -> ours):

* ``vision_backbone.featurizer`` (timm DINOv2-reg) -> ``vision_backbones.0`` (transformers
  Dinov2WithRegisters layers). timm stores DINOv2-reg with ``no_embed_class``: ``pos_embed``
  covers the patches only and ``cls_token`` already includes the class position. transformers
  adds ``position_embeddings[:, 0]`` to CLS and nothing to the registers, so CLS gets a zero
  position and the patch positions are copied (resampled bicubically if the grid differs).
* ``vision_backbone.fused_featurizer`` (timm SigLIP) -> ``vision_backbones.1`` (Siglip layers);
  its ``attn_pool`` head and final ``norm`` are unused: OFT reads the second-to-last block.
* timm's fused ``attn.qkv`` is split row-wise into q, k, v; LayerScale ``ls1.scale_factor``
  (prismatic's rename of timm's ``gamma``; either is accepted) -> ``layer_scale1.lambda1``.
* ``projector.*`` as is, ``language_model.model.*`` -> ``llm.*`` (``lm_head`` unused: actions
  come from the head), action head ``*`` -> ``action_head.*``, proprio ``*`` -> ``proprio_projector.*``.

The model is built on the meta device and the tensors are assigned, so a 7B checkpoint is
never randomly initialised and never held twice. Every problem raises ``CheckpointError``
naming the file (and the tensor or field).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoTokenizer, LlamaConfig

from .checkpoint_files import (CONFIG_FILE, HEAD_PATTERN, STATS_FILE, CheckpointError, read_json, resolve_device,
                               resolve_dtype)
from .configuration_vla import IMAGENET_MEAN, IMAGENET_STD, SIGLIP_MEAN, SIGLIP_STD, ConfigError, VLAConfig
from .modeling_vla import VLAModel

SIDECAR_FILE = 'vla_prune_ros.json'
SINGLE_WEIGHTS, WEIGHTS_INDEX = 'model.safetensors', 'model.safetensors.index.json'
PROPRIO_PATTERN = 'proprio_projector--*_checkpoint.pt'
VISION_PREFIXES = ('vision_backbone.featurizer', 'vision_backbone.fused_featurizer')

# Llama fields OFT leaves to LlamaConfig's defaults (its text_config only sets vocab and pad): Llama-2-7B.
LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0,
                 hidden_act='silu', attention_bias=False, mlp_bias=False)
LLAMA_PASSTHROUGH = ('num_key_value_heads', 'head_dim', 'rope_scaling')
# Attention heads of the timm ViTs OFT uses (not recoverable from weights): id -> (hidden size, heads).
TIMM_HEADS = {'vit_large_patch14_reg4_dinov2': (1024, 16), 'vit_large_patch14_dinov2': (1024, 16),
              'vit_so400m_patch14_siglip_224': (1152, 16), 'vit_so400m_patch14_siglip_384': (1152, 16)}
# prismatic's vision_backbone_id -> timm ids and image size, for a config.json that lacks them.
PRISMATIC_VISION = {
    'dinosiglip-vit-so-224px': (['vit_large_patch14_reg4_dinov2.lvd142m', 'vit_so400m_patch14_siglip_224'], 224),
    'dinosiglip-vit-so-384px': (['vit_large_patch14_reg4_dinov2.lvd142m', 'vit_so400m_patch14_siglip_384'], 384),
    'siglip-vit-so400m': (['vit_so400m_patch14_siglip_224'], 224),
    'dinov2-vit-l': (['vit_large_patch14_reg4_dinov2.lvd142m'], 224)}
DEFAULT_CHUNK_LEN = 8                       # OFT's NUM_ACTIONS_CHUNK for LIBERO
OFT_BOS, OFT_EOS, OFT_READOUT = 1, 2, 29871  # Llama's <s>, </s> and '▁'
CAMERA_NAMES = {1: ['primary'], 2: ['primary', 'wrist'], 3: ['primary', 'left_wrist', 'right_wrist']}


# ----------------------------------------------------------------------------- files

def _single_file(directory: Path, pattern: str, required: bool) -> Path | None:
    found = sorted(directory.glob(pattern))
    if len(found) > 1:
        raise CheckpointError(f'{directory}: several {pattern} files ({[p.name for p in found]}); keep one')
    if not found and required:
        raise CheckpointError(f'{directory}/{pattern.replace("*", "<step>")}: missing')
    return found[0] if found else None


# ----------------------------------------------------------------------------- tensors on disk

class SafetensorsSource:
    """Tensors by name from ``model.safetensors`` or its shards, read lazily."""

    def __init__(self, directory: Path):
        index, single = directory / WEIGHTS_INDEX, directory / SINGLE_WEIGHTS
        self._handles: dict[Path, object] = {}
        if index.is_file():
            weight_map = read_json(index).get('weight_map')
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f'{index}: no weight_map')
            self.file_of = {name: directory / shard for name, shard in weight_map.items()}
        elif single.is_file():
            self.file_of = {name: single for name in self._open(single).keys()}
        else:
            raise CheckpointError(f'{single}: missing (and no {WEIGHTS_INDEX})')

    def _open(self, path: Path):
        if path not in self._handles:
            if not path.is_file():
                raise CheckpointError(f'{path}: missing (listed in {WEIGHTS_INDEX})')
            try:
                self._handles[path] = safe_open(str(path), framework='pt')
            except (SafetensorError, OSError, ValueError) as error:
                raise CheckpointError(f'{path}: corrupt or unreadable ({error})') from None
        return self._handles[path]

    def names(self) -> set[str]:
        return set(self.file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.file_of:
            raise CheckpointError(f'{self.describe()}: missing tensor {name}')
        try:
            return tuple(self._open(self.file_of[name]).get_slice(name).get_shape())
        except SafetensorError as error:
            raise CheckpointError(f'{self.file_of[name]}: cannot read {name} ({error})') from None

    def get(self, name: str) -> torch.Tensor:
        if name not in self.file_of:
            raise CheckpointError(f'{self.describe()}: missing tensor {name}')
        try:
            return self._open(self.file_of[name]).get_tensor(name)
        except SafetensorError as error:
            raise CheckpointError(f'{self.file_of[name]}: cannot read {name} ({error})') from None

    def describe(self) -> str:
        files = sorted({str(p) for p in self.file_of.values()})
        return files[0] if len(files) == 1 else f'{files[0]} (+{len(files) - 1} shards)'


def _load_component(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save``d state dict, without DDP's ``module.`` prefix."""
    try:
        state = torch.load(str(path), map_location='cpu', weights_only=True)
    except Exception as error:   # pickle and zip errors come in many kinds
        raise CheckpointError(f'{path}: corrupt or unreadable ({error})') from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f'{path}: expected a state dict of tensors')
    return {name.removeprefix('module.'): tensor for name, tensor in state.items()}


# ----------------------------------------------------------------------------- config

def _read_sidecar(directory: Path) -> dict:
    path = directory / SIDECAR_FILE
    if not path.is_file():
        return {}
    data = read_json(path)
    checks = {
        'chunk_len': lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        'camera_names': lambda v: isinstance(v, list) and v and all(isinstance(n, str) for n in v)
        and len(set(v)) == len(v),
        'vision_num_heads': lambda v: isinstance(v, list) and all(isinstance(n, int) and n > 0 for n in v),
        'unnorm_key': lambda v: isinstance(v, str),
        'center_crop': lambda v: isinstance(v, bool),
    }
    for key, value in data.items():
        if key not in checks:
            raise CheckpointError(f'{path}: {key}: unknown field (known: {sorted(checks)})')
        if not checks[key](value):
            raise CheckpointError(f'{path}: {key}: bad value {value!r}')
    return data


def _backbone_config(source: SafetensorsSource, prefix: str, timm_id: str, heads: int | None,
                     config_path: Path) -> tuple[dict, int]:
    """A ``BackboneConfig`` dict read off one timm ViT's tensors, and its patch size."""
    short_id = timm_id.split('.')[0]
    if 'dinov2' in short_id:
        kind, mean, std = 'dinov2_reg', IMAGENET_MEAN, IMAGENET_STD
    elif 'siglip' in short_id:
        kind, mean, std = 'siglip', SIGLIP_MEAN, SIGLIP_STD
    else:
        raise CheckpointError(f'{config_path}: timm_model_ids: {timm_id!r} is not a DINOv2 or SigLIP ViT')
    hidden, channels, patch, patch_w = source.shape(f'{prefix}.patch_embed.proj.weight')
    if channels != 3 or patch != patch_w:
        raise CheckpointError(f'{source.describe()}: {prefix}.patch_embed.proj.weight has shape '
                              f'{(hidden, channels, patch, patch_w)}; expected (D, 3, p, p)')
    block_ids = {int(m.group(1)) for name in source.names()
                 if (m := re.match(re.escape(prefix) + r'\.blocks\.(\d+)\.', name))}
    if not block_ids or block_ids != set(range(len(block_ids))):
        raise CheckpointError(f'{source.describe()}: {prefix}.blocks.N: none or not numbered 0..N-1')
    if heads is None:
        known = TIMM_HEADS.get(short_id)
        if known is None or known[0] != hidden:
            raise CheckpointError(f'{config_path}: cannot tell the attention heads of {timm_id!r} with width '
                                  f'{hidden}; give "vision_num_heads" in {SIDECAR_FILE}')
        heads = known[1]
    registers = 0
    if kind == 'dinov2_reg' and f'{prefix}.reg_token' in source.names():
        registers = source.shape(f'{prefix}.reg_token')[1]
    backbone = dict(type=kind, hidden_size=hidden, num_hidden_layers=len(block_ids), num_attention_heads=heads,
                    intermediate_size=source.shape(f'{prefix}.blocks.0.mlp.fc1.weight')[0],
                    num_register_tokens=registers, mean=mean, std=std)
    return backbone, patch


def _llm_config(prismatic: dict, config_path: Path) -> dict:
    text = prismatic.get('text_config') or {}
    if not isinstance(text, dict):
        raise CheckpointError(f'{config_path}: text_config: expected an object')
    if text.get('model_type', 'llama') != 'llama' or not str(prismatic.get('llm_backbone_id', 'llama')).startswith(
            ('llama', 'vicuna')):
        raise CheckpointError(f'{config_path}: llm_backbone_id: only Llama-family LLMs are supported, '
                              f'got {prismatic.get("llm_backbone_id")!r}')
    llm = {key: text.get(key, default) for key, default in LLAMA2_7B.items()}
    llm.update({key: text[key] for key in LLAMA_PASSTHROUGH if text.get(key) is not None})
    return llm


def _norm_stats(directory: Path, prismatic: dict, unnorm_key: str | None, want_proprio: bool):
    """(action_norm, proprio_norm, file) from dataset_statistics.json, else config.json's norm_stats."""
    path = directory / STATS_FILE
    stats = read_json(path) if path.is_file() else {}
    if not stats:
        path, stats = directory / CONFIG_FILE, prismatic.get('norm_stats') or {}
    if not stats:
        if unnorm_key is not None:
            raise CheckpointError(f'{directory / STATS_FILE}: missing, so unnorm_key {unnorm_key!r} has no statistics')
        return None, None, path
    if unnorm_key is None:
        if len(stats) != 1:
            raise CheckpointError(f'{path}: several statistics {sorted(stats)}; choose one with unnorm_key')
        unnorm_key = next(iter(stats))
    if unnorm_key not in stats:
        raise CheckpointError(f'{path}: unnorm_key {unnorm_key!r} not found; available: {sorted(stats)}')
    entry = stats[unnorm_key]

    def pick(part: str) -> dict | None:
        values = entry.get(part) if isinstance(entry, dict) else None
        if values is None:
            return None
        if not isinstance(values, dict) or 'q01' not in values or 'q99' not in values:
            raise CheckpointError(f'{path}: {unnorm_key}.{part}: needs q01 and q99 (BOUNDS_Q99)')
        return {key: values[key] for key in ('q01', 'q99', 'mask') if key in values}

    action = pick('action')
    if action is None:
        raise CheckpointError(f'{path}: {unnorm_key}.action: missing')
    proprio = pick('proprio') if want_proprio else None
    if want_proprio and proprio is None:
        raise CheckpointError(f'{path}: {unnorm_key}.proprio: missing, but the checkpoint has a proprio projector')
    return action, proprio, path


def oft_config(directory: str | Path, source: SafetensorsSource, head: dict[str, torch.Tensor],
               proprio: dict[str, torch.Tensor] | None, unnorm_key: str | None = None, num_cameras: int = 2,
               attn_implementation: str | None = None) -> VLAConfig:
    """The ``VLAConfig`` of an OFT checkpoint: config.json + sidecar + shapes read off the tensors."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f'{config_path}: missing')
    prismatic = read_json(config_path)
    sidecar = _read_sidecar(directory)
    known_ids, known_size = PRISMATIC_VISION.get(prismatic.get('vision_backbone_id'), (None, 224))
    timm_ids = prismatic.get('timm_model_ids', known_ids)
    fused = prismatic.get('use_fused_vision_backbone')
    if fused is None:
        fused = isinstance(timm_ids, list) and len(timm_ids) == 2
    if not isinstance(timm_ids, list) or len(timm_ids) != 1 + int(bool(fused)):
        raise CheckpointError(f'{config_path}: timm_model_ids: need {1 + int(bool(fused))} ids '
                              f'(use_fused_vision_backbone={fused}), got {timm_ids!r}')
    image_sizes = prismatic.get('image_sizes', [known_size] * len(timm_ids))
    if not isinstance(image_sizes, list) or len(image_sizes) != len(timm_ids) or len(set(image_sizes)) != 1:
        raise CheckpointError(f'{config_path}: image_sizes: need one equal size per ViT, got {image_sizes!r}')
    heads = sidecar.get('vision_num_heads') or [None] * len(timm_ids)
    if len(heads) != len(timm_ids):
        raise CheckpointError(f'{directory / SIDECAR_FILE}: vision_num_heads: need {len(timm_ids)} values')
    backbones, patches = [], set()
    for prefix, timm_id, head_count in zip(VISION_PREFIXES, timm_ids, heads):
        backbone, patch = _backbone_config(source, prefix, timm_id, head_count, config_path)
        backbones.append(backbone)
        patches.add(patch)
    if len(patches) != 1:
        raise CheckpointError(f'{source.describe()}: the ViTs use different patch sizes {sorted(patches)}')

    head_blocks = {int(m.group(1)) for name in head if (m := re.match(r'model\.mlp_resnet_blocks\.(\d+)\.', name))}
    if 'model.fc2.weight' not in head:
        raise CheckpointError(f'{_head_path(directory)}: missing tensor model.fc2.weight (not an L1 regression head)')
    proprio_dim = 0
    if proprio is not None:
        if 'fc1.weight' not in proprio:
            raise CheckpointError(f'{_proprio_path(directory)}: missing tensor fc1.weight')
        proprio_dim = proprio['fc1.weight'].shape[1]
    action_dim = head['model.fc2.weight'].shape[0]
    action_norm, proprio_norm, stats_path = _norm_stats(directory, prismatic, unnorm_key or sidecar.get('unnorm_key'),
                                                        proprio_dim > 0)
    camera_names = sidecar.get('camera_names') or CAMERA_NAMES.get(num_cameras,
                                                                   [f'camera{i}' for i in range(num_cameras)])
    names = ['dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper']
    values = dict(
        camera_names=camera_names,
        vision=dict(image_size=image_sizes[0], patch_size=patches.pop(), backbones=backbones),
        llm=_llm_config(prismatic, config_path), proprio_dim=proprio_dim, action_dim=action_dim,
        chunk_len=sidecar.get('chunk_len', DEFAULT_CHUNK_LEN),
        action_names=names if action_dim == len(names) else [f'a{i}' for i in range(action_dim)],
        head_num_blocks=len(head_blocks), bos_token_id=OFT_BOS, eos_token_id=OFT_EOS,
        readout_token_id=OFT_READOUT, pad_token_id=prismatic.get('pad_token_id', 32000), causal=False,
        center_crop=sidecar.get('center_crop', True), attn_implementation=attn_implementation or 'sdpa',
        action_norm=action_norm, proprio_norm=proprio_norm)
    try:
        return VLAConfig.from_dict(values)
    except ConfigError as error:   # statistics of the wrong length are the statistics file's fault
        bad_file = stats_path if str(error).startswith('norm_stats') else config_path
        raise CheckpointError(f'{bad_file}: bad config: {error}') from None


def _head_path(directory: Path) -> Path:
    return _single_file(directory, HEAD_PATTERN, required=True)


def _proprio_path(directory: Path) -> Path | None:
    return _single_file(directory, PROPRIO_PATTERN, required=False)


# ----------------------------------------------------------------------------- weights

def resample_patch_grid(positions: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, g*g, D) patch position embeddings -> (1, grid*grid, D), bicubic as timm resamples them."""
    old = math.isqrt(positions.shape[1])
    if old == grid:
        return positions
    image = positions.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    image = torch.nn.functional.interpolate(image, size=(grid, grid), mode='bicubic', antialias=True,
                                            align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(positions.dtype)


def _split_positions(pos_embed: torch.Tensor, grid: int, name: str, where: str):
    """timm ``pos_embed`` -> (class position or None, patch positions on ``grid``)."""
    count = pos_embed.shape[1]
    if math.isqrt(count) ** 2 == count:                # no_embed_class: patches only (DINOv2-reg, SigLIP)
        return None, resample_patch_grid(pos_embed, grid)
    if math.isqrt(count - 1) ** 2 == count - 1:        # class position first
        return pos_embed[:, :1], resample_patch_grid(pos_embed[:, 1:], grid)
    raise CheckpointError(f'{where}: {name} has {count} positions: neither a square patch grid nor CLS + grid')


def _vision_weights(source: SafetensorsSource, prefix: str, ours: str, kind: str, num_blocks: int, grid: int,
                    take) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """One timm ViT's tensors under our names, and our name -> its timm name."""
    state, theirs = {}, {}

    def put(name: str, tensor: torch.Tensor, source_name: str) -> None:
        state[name], theirs[name] = tensor, source_name

    def copy(name: str, source_name: str) -> None:
        put(name, take(source_name), source_name)

    where = source.describe()
    dino = kind == 'dinov2_reg'
    embed = 'embeddings.patch_embeddings.projection' if dino else 'embeddings.patch_embedding'
    for suffix in ('weight', 'bias'):
        copy(f'{ours}.{embed}.{suffix}', f'{prefix}.patch_embed.proj.{suffix}')
    pos_embed = f'{prefix}.pos_embed'
    class_position, patch_positions = _split_positions(take(pos_embed), grid, pos_embed, where)
    if dino:
        cls_token = take(f'{prefix}.cls_token')
        hidden = cls_token.shape[-1]
        if class_position is None:   # timm folded the class position into cls_token already
            class_position = torch.zeros(1, 1, hidden, dtype=patch_positions.dtype)
        put(f'{ours}.embeddings.cls_token', cls_token, f'{prefix}.cls_token')
        put(f'{ours}.embeddings.position_embeddings', torch.cat([class_position, patch_positions], dim=1), pos_embed)
        put(f'{ours}.embeddings.mask_token', torch.zeros(1, hidden, dtype=cls_token.dtype), f'{prefix}.cls_token')
        if f'{prefix}.reg_token' in source.names():
            copy(f'{ours}.embeddings.register_tokens', f'{prefix}.reg_token')
        names = dict(norm1='norm1', norm2='norm2', proj='attention.o_proj', q='attention.q_proj',
                     k='attention.k_proj', v='attention.v_proj')
    else:
        if class_position is not None:
            raise CheckpointError(f'{where}: {pos_embed} has a class position; SigLIP has no CLS token')
        put(f'{ours}.embeddings.position_embedding.weight', patch_positions[0], pos_embed)
        names = dict(norm1='layer_norm1', norm2='layer_norm2', proj='self_attn.out_proj', q='self_attn.q_proj',
                     k='self_attn.k_proj', v='self_attn.v_proj')
    all_names = source.names()
    for block in range(num_blocks):
        src, dst = f'{prefix}.blocks.{block}', f'{ours}.blocks.{block}'
        for suffix in ('weight', 'bias'):
            for part in ('norm1', 'norm2'):
                copy(f'{dst}.{names[part]}.{suffix}', f'{src}.{part}.{suffix}')
            for part in ('fc1', 'fc2'):
                copy(f'{dst}.mlp.{part}.{suffix}', f'{src}.mlp.{part}.{suffix}')
            copy(f'{dst}.{names["proj"]}.{suffix}', f'{src}.attn.proj.{suffix}')
            qkv_name = f'{src}.attn.qkv.{suffix}'
            qkv = take(qkv_name)
            if qkv.shape[0] % 3:
                raise CheckpointError(f'{where}: {qkv_name} has {qkv.shape[0]} rows, not 3 x width')
            for part, chunk in zip('qkv', qkv.chunk(3, dim=0)):   # timm orders the fused rows q, k, v
                put(f'{dst}.{names[part]}.{suffix}', chunk.contiguous(), qkv_name)
        if dino:
            for scale in ('ls1', 'ls2'):
                gamma = f'{src}.{scale}.scale_factor'
                gamma = gamma if gamma in all_names else f'{src}.{scale}.gamma'
                copy(f'{dst}.layer_scale{scale[-1]}.lambda1', gamma)
    return state, theirs


def oft_state_dict(config: VLAConfig, source: SafetensorsSource, head: dict[str, torch.Tensor],
                   proprio: dict[str, torch.Tensor] | None, head_path: Path, proprio_path: Path | None
                   ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Our parameter names -> tensors, and our name -> 'file: original name' for error messages."""
    origin: dict[str, str] = {}
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        used.add(name)
        return source.get(name)

    state: dict[str, torch.Tensor] = {}
    grid = config.vision.grid
    for index, (prefix, backbone) in enumerate(zip(VISION_PREFIXES, config.vision.backbones)):
        part, theirs = _vision_weights(source, prefix, f'vision_backbones.{index}', backbone.type,
                                       backbone.num_hidden_layers, grid, take)
        state.update(part)
        origin.update({name: f'{source.file_of[theirs[name]]}: {theirs[name]}' for name in part})
    for name in sorted(source.names()):
        if name.startswith('projector.'):
            ours = name
        elif name.startswith('language_model.model.'):
            ours = 'llm.' + name.removeprefix('language_model.model.')
        else:
            continue
        state[ours] = take(name)
        origin[ours] = f'{source.file_of[name]}: {name}'
    # Present in OFT checkpoints but not used by OFT's action path.
    unused = re.compile(r'language_model\.lm_head\.|vision_backbone\.(fused_)?featurizer\.(norm|attn_pool|fc_norm)\.')
    leftover = sorted(name for name in source.names() - used if not unused.match(name))
    if leftover:
        raise CheckpointError(f'{source.describe()}: unexpected tensors {leftover[:3]} '
                              f'({len(leftover)} in all; FiLM or other OFT variants are not supported)')
    for name, tensor in head.items():
        state[f'action_head.{name}'] = tensor
        origin[f'action_head.{name}'] = f'{head_path}: {name}'
    for name, tensor in (proprio or {}).items():
        state[f'proprio_projector.{name}'] = tensor
        origin[f'proprio_projector.{name}'] = f'{proprio_path}: {name}'
    return state, origin


def _assign(model: VLAModel, state: dict[str, torch.Tensor], origin: dict[str, str], source: SafetensorsSource,
            dtype: torch.dtype) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f'{source.describe()}: missing tensors for {missing[:3]} ({len(missing)} in all)')
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f'{origin[unexpected[0]]}: unexpected tensor (as {unexpected[0]}; '
                              f'{len(unexpected)} in all)')
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f'{origin[name]} has shape {tuple(tensor.shape)}; config.json implies '
                                  f'{tuple(expected[name].shape)} (as {name})')
        state[name] = tensor.to(dtype)
    model.load_state_dict(state, strict=True, assign=True)


# ----------------------------------------------------------------------------- entry point

def load_oft_checkpoint(directory: Path, device: str = 'cpu', dtype: str = 'float32',
                        attn_implementation: str | None = None, unnorm_key: str | None = None,
                        num_cameras: int = 2):
    """Load (model, tokenizer) from a published OpenVLA-OFT checkpoint directory, like ``load_checkpoint``."""
    from accelerate import init_empty_weights

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f'{directory}: checkpoint directory does not exist')
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    head_path, proprio_path = _head_path(directory), _proprio_path(directory)
    head = _load_component(head_path)
    proprio = _load_component(proprio_path) if proprio_path is not None else None
    source = SafetensorsSource(directory)
    config = oft_config(directory, source, head, proprio, unnorm_key, num_cameras, attn_implementation)
    state, origin = oft_state_dict(config, source, head, proprio, head_path, proprio_path)
    with init_empty_weights(include_buffers=False):   # parameters on meta: assigned below, never initialised
        model = VLAModel(config)
    _assign(model, state, origin, source, torch_dtype)
    try:
        # Handing over a LlamaConfig stops AutoTokenizer from parsing the prismatic config.json (and warning).
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, config=LlamaConfig())
    except Exception as error:   # transformers raises many kinds here
        raise CheckpointError(f'{directory}/tokenizer.json: cannot load tokenizer ({error})') from None
    model.to(device=torch_device, dtype=torch_dtype).eval()
    return model, tokenizer
