"""sensor_msgs/CompressedImage decoding (data/images.compressed_image_to_rgb)."""
import cv2
import numpy as np
import pytest

from vla_prune_ros.data.images import ImageConversionError, compressed_image_to_rgb, rgb_to_compressed


def gradient_rgb(height=24, width=32):
    rows = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    cols = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    return np.stack([np.broadcast_to(rows, (height, width)), np.broadcast_to(cols, (height, width)),
                     np.full((height, width), 77, np.uint8)], axis=2).copy()


def test_png_round_trip_is_exact():
    rgb = gradient_rgb()
    fields = rgb_to_compressed(rgb, 'png')
    decoded = compressed_image_to_rgb(fields['format'], fields['data'])
    assert decoded.dtype == np.uint8 and decoded.flags['C_CONTIGUOUS']
    np.testing.assert_array_equal(decoded, rgb)


def test_jpeg_round_trip_is_close_and_rgb_ordered():
    rgb = gradient_rgb()
    fields = rgb_to_compressed(rgb, 'jpeg', quality=95)
    decoded = compressed_image_to_rgb('rgb8; jpeg compressed bgr8', fields['data'])
    assert decoded.shape == rgb.shape
    assert np.abs(decoded.astype(int) - rgb.astype(int)).mean() < 4.0
    # channel 2 is constant 77: a BGR/RGB swap would put the gradient there
    assert abs(float(decoded[:, :, 2].mean()) - 77) < 4


def test_grey_png_becomes_three_channels():
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
    ok, encoded = cv2.imencode('.png', grey)
    assert ok
    decoded = compressed_image_to_rgb('png', encoded.tobytes())
    assert decoded.shape == (6, 8, 3)
    np.testing.assert_array_equal(decoded[:, :, 0], grey)


@pytest.mark.parametrize('fmt, data, words', [
    ('tiff', b'\x00' * 10, 'unsupported compressed image format'),
    ('jpeg', b'', 'no data'),
    ('png', b'not a png at all', 'could not be decoded'),
    ('16UC1; compressedDepth png', b'\x00' * 10, 'depth'),
])
def test_bad_compressed_images_raise_value_error(fmt, data, words):
    with pytest.raises(ValueError, match=words):
        compressed_image_to_rgb(fmt, data)
    with pytest.raises(ImageConversionError):
        compressed_image_to_rgb(fmt, data)
