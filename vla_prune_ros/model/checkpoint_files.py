"""What both checkpoint layouts share: file names, the error every loader raises, device and dtype
names, JSON reading, and which layout a directory holds (``checkpoint`` and ``oft_checkpoint`` both
import this, and neither imports the other back)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

CONFIG_FILE, WEIGHTS_FILE, STATS_FILE = 'config.json', 'model.safetensors', 'dataset_statistics.json'
HEAD_PATTERN = 'action_head--*_checkpoint.pt'          # OFT's action head file
PRISMATIC_KEYS = ('vision_backbone_id', 'llm_backbone_id', 'timm_model_ids')
DTYPES = {'float32': torch.float32, 'fp32': torch.float32, 'bfloat16': torch.bfloat16, 'bf16': torch.bfloat16,
          'float16': torch.float16, 'fp16': torch.float16}


class CheckpointError(RuntimeError):
    """A checkpoint cannot be loaded; the message names the file and the reason."""


def resolve_device(device: str) -> torch.device:
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise CheckpointError(f"device '{device}' requested but CUDA is not available on this machine")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype '{dtype}' not one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def read_json(path: Path) -> dict:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except UnicodeDecodeError:      # a binary file: the decoder's message would not name the file
        raise CheckpointError(f'{path}: not valid JSON (binary data, not UTF-8 text)') from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f'{path}: not valid JSON ({error})') from None
    if not isinstance(data, dict):
        raise CheckpointError(f'{path}: expected a JSON object, got {type(data).__name__ if data is not None else "null"}')
    return data


def is_oft_checkpoint(directory: Path) -> bool:
    """True for a prismatic ``config.json`` or an OFT action-head file (the loader then names what is missing)."""
    directory = Path(directory)
    if any(directory.glob(HEAD_PATTERN)):
        return True
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and any(key in config for key in PRISMATIC_KEYS)
