"""Loading checkpoints in the published OpenVLA-OFT layout (prismatic names)."""
from __future__ import annotations

from pathlib import Path


def is_oft_checkpoint(directory: Path) -> bool:
    return any(Path(directory).glob('action_head--*_checkpoint.pt'))


def load_oft_checkpoint(directory: Path, device: str = 'cpu', dtype: str = 'float32',
                        attn_implementation: str | None = None):
    from .checkpoint import CheckpointError
    raise CheckpointError(f'{directory}: OpenVLA-OFT layout detected; its loader is not written yet')
