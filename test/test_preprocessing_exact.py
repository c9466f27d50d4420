"""OFT's centre crop is TF's ``crop_and_resize`` in float32; ours must give the same uint8 pixels.

The reference below restates TF's formula independently: sample positions as TF's kernel
computes them (float32, ``y1 (H-1) + i (y2-y1)(H-1)/(n-1)``), then bilinear weights applied as
matrices in float64. After the uint8 conversion (clip, x 255.5, truncate) the two must agree
bit for bit, except where the exact value lies within 1e-6 of a rounding edge k / 255.5.
"""
import numpy as np
import pytest

from vla_prune_ros.model.processing import center_crop_box, crop_and_resize, prepare_image


def tf_positions(start: np.float32, stop: np.float32, extent: int, size: int) -> np.ndarray:
    scale = np.float32(np.float32(stop - start) * np.float32(extent - 1)) / np.float32(size - 1)
    return np.array([np.float32(np.float32(start * np.float32(extent - 1)) + np.float32(np.float32(i) * scale))
                     for i in range(size)], dtype=np.float32)


def weights(positions: np.ndarray, extent: int) -> np.ndarray:
    """(n, extent) float64: each row puts 1 - frac on floor(p) and frac on ceil(p)."""
    matrix = np.zeros((len(positions), extent))
    for row, position in enumerate(positions.astype(np.float64)):
        low, high = int(np.floor(position)), int(np.ceil(position))
        frac = position - low
        matrix[row, low] += 1.0 - frac
        matrix[row, high] += frac
    return matrix


def reference_center_crop(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 result, float64 values before the conversion) for a (size, size, 3) uint8 image."""
    unit = image.astype(np.float32) * np.float32(1 / 255)       # TF convert_image_dtype(uint8 -> float32)
    y1, x1, y2, x2 = center_crop_box()
    rows = weights(tf_positions(y1, y2, image.shape[0], size), image.shape[0])
    cols = weights(tf_positions(x1, x2, image.shape[1], size), image.shape[1])
    values = np.einsum('iwc,jw->ijc', np.einsum('ih,hwc->iwc', rows, unit.astype(np.float64)), cols)
    clipped = np.clip(values, 0.0, 1.0)
    return np.minimum(np.trunc(clipped * 255.5), 255).astype(np.uint8), clipped


@pytest.mark.parametrize('size, seed', [(224, 0), (224, 1), (112, 2), (56, 3), (97, 4)])
def test_center_crop_is_bit_equal_to_tf_crop_and_resize(size, seed):
    image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ours = prepare_image(image, size, center_crop=True)
    expected, values = reference_center_crop(image, size)
    differ = ours != expected
    edge_distance = np.abs(values * 255.5 - np.round(values * 255.5)) / 255.5
    assert np.all(edge_distance[differ] < 1e-6), f'{int(differ.sum())} pixels differ away from a rounding edge'
    assert differ.mean() < 1e-3


def test_crop_and_resize_interpolates_in_float32_with_floor_and_ceil():
    """A ramp image: each output is exactly top + (bottom - top) * frac of its two source rows."""
    image = np.tile(np.arange(10, dtype=np.float32)[:, None, None] * np.float32(0.1), (1, 4, 1))
    out = crop_and_resize(image, (0.1, 0.0, 0.9, 1.0), 5)
    positions = tf_positions(np.float32(0.1), np.float32(0.9), 10, 5)
    low = np.floor(positions)
    expected = (low * np.float32(0.1) + (np.ceil(positions) * np.float32(0.1) - low * np.float32(0.1))
                * (positions - low)).astype(np.float32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0, 0], expected)
