"""Checkpoints on disk.

The project's format is a directory with ``config.json`` (a ``VLAConfig``),
``model.safetensors``, the tokenizer files and ``dataset_statistics.json``. It loads with no
network. Every failure raises ``CheckpointError`` naming the file, so the node can end with
one clear line instead of a traceback.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .checkpoint_files import (CONFIG_FILE, STATS_FILE, WEIGHTS_FILE, CheckpointError, is_oft_checkpoint,
                               read_json, resolve_device, resolve_dtype)
from .configuration_vla import ConfigError, VLAConfig
from .modeling_vla import VLAModel
from .oft_checkpoint import load_oft_checkpoint
from .tokenizer import load_tokenizer

def save_checkpoint(model: VLAModel, tokenizer, directory: str | Path, dataset_statistics: dict | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / CONFIG_FILE, 'w') as handle:
        json.dump(model.config.to_dict(), handle, indent=2)
    state = {name: tensor.detach().to('cpu').contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={'format': 'pt', 'family': 'openvla-oft'})
    tokenizer.save_pretrained(str(directory))
    stats = dataset_statistics or {}
    with open(directory / STATS_FILE, 'w') as handle:
        json.dump(stats, handle, indent=2)
    return directory


def load_config(directory: Path) -> VLAConfig:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f'{path}: missing')
    data = read_json(path)
    try:
        return VLAConfig.from_dict(data)
    except ConfigError as error:
        raise CheckpointError(f'{path}: bad config: {error}') from None


def load_checkpoint(directory: str | Path, device: str = 'cpu', dtype: str = 'float32',
                    attn_implementation: str | None = None):
    """Load (model, tokenizer). The model is in eval mode on ``device`` with ``dtype``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f'{directory}: checkpoint directory does not exist')
    if is_oft_checkpoint(directory):
        return load_oft_checkpoint(directory, device=device, dtype=dtype, attn_implementation=attn_implementation)
    config = load_config(directory)
    if attn_implementation:
        config.attn_implementation = attn_implementation
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f'{weights}: missing')
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f'{weights}: corrupt or unreadable ({error})') from None
    model = VLAModel(config)
    load_state(model, state, weights)
    try:
        tokenizer = load_tokenizer(directory)
    except Exception as error:  # transformers raises many kinds here
        raise CheckpointError(f'{directory}/tokenizer.json: cannot load tokenizer ({error})') from None
    model.to(device=resolve_device(device), dtype=resolve_dtype(dtype)).eval()
    return model, tokenizer


def load_state(model: VLAModel, state: dict[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f'missing {missing[:3]}' if missing else f'unexpected {unexpected[:3]}'
        raise CheckpointError(f'{source}: weights do not match config.json ({detail})')
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f'{source}: {name} has shape {tuple(tensor.shape)}, '
                                  f'config expects {tuple(expected[name].shape)}')
    model.load_state_dict(state, strict=True)
