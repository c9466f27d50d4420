"""Inputs and outputs of the model: pixels, prompt ids, proprio and action (un)normalisation.

Follows OpenVLA-OFT's published inference path (see shared METHODS.md): a 90 %-area center
crop with TensorFlow ``crop_and_resize`` semantics, one normalisation per ViT stacked as
channels, the prompt tokenised with BOS and no EOS plus the appended readout token, and
BOUNDS_Q99 un-normalisation.
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import cv2
import numpy as np
import torch

from .configuration_vla import VLAConfig

CROP_AREA = 0.9


def crop_and_resize(image: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """``tf.image.crop_and_resize`` (bilinear) of one float32 image, computed as TF's kernel does, in float32.

    ``box`` is (y1, x1, y2, x2) in normalised coordinates. Output row i samples source row
    ``y1 (H-1) + i ((y2-y1)(H-1)/(n-1))``, interpolated between its floor and ceil rows as
    ``top + (bottom - top) * frac`` (columns likewise), every operation in float32. (OpenCV's remap
    quantises sample positions to 1/32 px, which leaves some pixels one grey level off.)
    """
    image = np.asarray(image, dtype=np.float32)
    height, width = image.shape[:2]
    channels = image.shape[2] if image.ndim == 3 else 1
    box32 = tuple(float(np.float32(v)) for v in box)
    top_rows, bottom_rows, y_frac = _bilinear_samples(box32[0], box32[2], height, size, 1)
    left, right, x_frac = _bilinear_samples(box32[1], box32[3], width, size, channels)
    # Channels folded into the columns, so every gather and blend runs over long rows. Each source
    # row is blended across once; output rows then take their two blended source rows. That is
    # TF's per-pixel arithmetic (across, then down), in the same order.
    flat = image.reshape(height, width * channels)
    left_values = flat[:, left]
    blended = left_values + (flat[:, right] - left_values) * x_frac
    top, bottom = np.take(blended, top_rows, axis=0), np.take(blended, bottom_rows, axis=0)
    out = top + (bottom - top) * y_frac[:, None]
    return out.reshape((size, size, channels) if image.ndim == 3 else (size, size))


@functools.lru_cache(maxsize=32)
def _bilinear_samples(start: float, stop: float, extent: int, size: int, channels: int):
    """TF's sample positions along one axis: floor and ceil indices (one per channel of each
    position, for channel-folded columns) and the float32 fraction between them. Cached: the
    centre crop asks for the same few every frame."""
    start, stop, last = np.float32(start), np.float32(stop), np.float32(extent - 1)
    scale = (stop - start) * last / np.float32(size - 1)
    position = start * last + np.arange(size, dtype=np.float32) * scale
    low = np.floor(position)
    frac = position - low
    low_index = np.clip(low.astype(np.int64), 0, extent - 1)
    high_index = np.clip(np.ceil(position).astype(np.int64), 0, extent - 1)
    if channels > 1:
        offsets = np.arange(channels)
        low_index = (low_index[:, None] * channels + offsets).ravel()
        high_index = (high_index[:, None] * channels + offsets).ravel()
        frac = np.repeat(frac, channels)
    for array in (low_index, high_index, frac):
        array.setflags(write=False)
    return low_index, high_index, frac


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1] as TF's ``convert_image_dtype``: a multiply by float32(1/255)."""
    return image.astype(np.float32) * np.float32(1.0 / 255.0)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 as OFT does: clip, then TF's saturating ``convert_image_dtype`` (x 255.5, truncate)."""
    scaled = np.clip(image, 0.0, 1.0).astype(np.float32) * np.float32(255.5)
    return np.minimum(scaled, np.float32(255.0)).astype(np.uint8)


def center_crop_box() -> tuple[float, float, float, float]:
    """OFT's box: the central square of sqrt(0.9) of the side (90 % of the area), in float32."""
    scale = np.sqrt(np.float32(CROP_AREA))
    offset = (np.float32(1) - scale) / np.float32(2)
    return offset, offset, offset + scale, offset + scale


def prepare_image(image: np.ndarray, size: int, center_crop: bool) -> np.ndarray:
    """Any-size uint8 RGB -> (size, size, 3) uint8, as the model saw it in training."""
    if image.shape[:2] != (size, size):
        interpolation = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
        image = cv2.resize(image, (size, size), interpolation=interpolation)
    if not center_crop:
        return image
    return to_uint8(crop_and_resize(to_unit_float(image), center_crop_box(), size))


def prepare_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3), uncropped (``prepare_image`` per frame); frames already at
    that size are returned as they are, not copied."""
    if frames.shape[1:3] == (size, size):
        return frames
    return np.stack([prepare_image(frame, size, center_crop=False) for frame in frames])


def pixel_values(images: list[np.ndarray], config: VLAConfig) -> torch.Tensor:
    """Prepared uint8 images (one per camera, model order) -> (1, cameras * backbones * 3, S, S) float.

    In numpy, float32: the same correctly rounded divide and subtract as torch, in one pass over
    all cameras instead of a few small torch ops per camera and backbone."""
    unit = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)).astype(np.float32)  # uint8 moved: 4x cheaper
    unit /= np.float32(255.0)
    normalized = [(unit - _channel_constant(backbone.mean)) / _channel_constant(backbone.std)
                  for backbone in config.vision.backbones]
    stacked = np.stack(normalized, axis=1)                        # (cameras, backbones, 3, S, S)
    return torch.from_numpy(stacked.reshape(1, -1, *stacked.shape[-2:]))


def _channel_constant(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(1, 3, 1, 1)


def _bounds(stats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q01, q99 and the mask of BOUNDS_Q99 statistics (no mask: every dimension is normalised)."""
    q01, q99 = np.asarray(stats.q01), np.asarray(stats.q99)
    mask = np.ones_like(q01, dtype=bool) if stats.mask is None else np.asarray(stats.mask, dtype=bool)
    return q01, q99, mask


def normalize_proprio(proprio: np.ndarray, config: VLAConfig) -> np.ndarray:
    """BOUNDS_Q99 normalisation to [-1, 1] where the mask is set (all dims when there is no mask)."""
    proprio = np.asarray(proprio, dtype=np.float64)
    if config.proprio_norm is None:
        return proprio
    q01, q99, mask = _bounds(config.proprio_norm)
    normalized = 2.0 * (proprio - q01) / (q99 - q01 + 1e-8) - 1.0
    # As OFT's inference: clip after choosing, so dims left unnormalised by the mask are clipped too.
    return np.clip(np.where(mask, normalized, proprio), -1.0, 1.0)


def unnormalize_actions(normalized: np.ndarray, config: VLAConfig) -> np.ndarray:
    """a = 0.5 (a_hat + 1)(q99 - q01 + 1e-8) + q01 where the mask is set."""
    normalized = np.asarray(normalized, dtype=np.float64)
    if config.action_norm is None:
        return normalized
    q01, q99, mask = _bounds(config.action_norm)
    return np.where(mask, 0.5 * (normalized + 1.0) * (q99 - q01 + 1e-8) + q01, normalized)


def normalize_actions(actions: np.ndarray, config: VLAConfig) -> np.ndarray:
    """Inverse of ``unnormalize_actions`` (for training targets), clipped to [-1, 1]."""
    actions = np.asarray(actions, dtype=np.float64)
    if config.action_norm is None:
        return actions
    q01, q99, mask = _bounds(config.action_norm)
    return np.where(mask, np.clip(2.0 * (actions - q01) / (q99 - q01 + 1e-8) - 1.0, -1.0, 1.0), actions)


def prompt_ids(tokenizer, instruction: str, config: VLAConfig) -> list[int]:
    """Ids after BOS: the prompt tokenised with BOS and without EOS, then the readout token appended."""
    text = config.prompt_template.format(instruction=instruction.strip().lower())
    ids = tokenizer(text, add_special_tokens=True)['input_ids']
    if ids and ids[0] == config.bos_token_id:
        ids = ids[1:]
    if ids and ids[-1] == config.eos_token_id:
        ids = ids[:-1]
    return list(ids) + [config.readout_token_id]


def template_tokens(tokenizer, instruction: str, config: VLAConfig) -> int:
    """How many of ``prompt_ids`` come from the fixed template before the instruction (10 for
    OFT's Llama prompt "In: What action should the robot take to"): the ids the template prefix
    alone tokenises to that the full prompt shares."""
    prefix = config.prompt_template.split('{instruction}')[0].rstrip()
    alone = tokenizer(prefix, add_special_tokens=True)['input_ids']
    if alone and alone[0] == config.bos_token_id:
        alone = alone[1:]
    full = prompt_ids(tokenizer, instruction, config)
    shared = 0
    while shared < min(len(alone), len(full) - 1) and alone[shared] == full[shared]:
        shared += 1
    return shared


def pad_prompts(batch_ids: list[list[int]], config: VLAConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad prompts of mixed length. Padding goes before the readout token, so the action block lines up."""
    longest = max(len(ids) for ids in batch_ids)
    ids = torch.full((len(batch_ids), longest), config.pad_token_id, dtype=torch.long)
    padding = torch.zeros((len(batch_ids), longest), dtype=torch.bool)
    for row, sample in enumerate(batch_ids):
        text, readout = sample[:-1], sample[-1]
        ids[row, :len(text)] = torch.tensor(text, dtype=torch.long)
        padding[row, len(text):longest - 1] = True
        ids[row, -1] = readout
    return ids, padding


def load_dataset_statistics(path: Path) -> dict:
    with open(path) as handle:
        return json.load(handle)


def random_crop_box(rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Training augmentation matching the center crop: a 90 %-area square box at a random offset."""
    side = math.sqrt(CROP_AREA)
    y1, x1 = rng.uniform(0.0, 1.0 - side, size=2)
    return (y1, x1, y1 + side, x1 + side)
