"""Tests for vla_prune_ros.data.images (sensor_msgs/Image <-> numpy RGB)."""
import array
import sys
import types

import cv2
import numpy as np
import pytest

from vla_prune_ros.data import images as image_conversion
from vla_prune_ros.data.images import (
    ImageConversionError,
    SUPPORTED_ENCODINGS,
    fill_image_msg,
    image_fields_to_rgb,
    msg_to_rgb,
    resize_rgb,
    rgb_to_image_fields,
)


def random_rgb(height=5, width=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def grey_rgb(height=4, width=6, seed=1):
    grey = np.random.default_rng(seed).integers(0, 256, size=(height, width), dtype=np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def decode(fields):
    return image_fields_to_rgb(fields['encoding'], fields['height'], fields['width'], fields['step'],
                               fields['is_bigendian'], fields['data'])


def pad_rows(fields, channels, padding, fill=0xAB):
    """Re-pack the rows of unpadded fields with `padding` garbage bytes at the end of each row."""
    height, width = fields['height'], fields['width']
    rows = np.frombuffer(fields['data'], np.uint8).reshape(height, width * channels)
    padded = np.full((height, width * channels + padding), fill, np.uint8)
    padded[:, :width * channels] = rows
    return dict(fields, step=width * channels + padding, data=padded.tobytes())


CHANNELS = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8'])
@pytest.mark.parametrize('padding', [0, 5])
def test_colour_round_trip(encoding, padding):
    rgb = random_rgb()
    fields = rgb_to_image_fields(rgb, encoding)
    assert fields['step'] == rgb.shape[1] * CHANNELS[encoding]
    assert len(fields['data']) == fields['step'] * fields['height']
    fields = pad_rows(fields, CHANNELS[encoding], padding)
    back = decode(fields)
    assert back.dtype == np.uint8 and back.shape == rgb.shape and back.flags.c_contiguous
    np.testing.assert_array_equal(back, rgb)


@pytest.mark.parametrize('padding', [0, 3])
def test_mono_round_trip_of_grey_image(padding):
    rgb = grey_rgb()
    fields = pad_rows(rgb_to_image_fields(rgb, 'mono8'), 1, padding)
    assert fields['step'] == rgb.shape[1] + padding
    np.testing.assert_array_equal(decode(fields), rgb)


def test_mono8_encoding_of_colour_is_luminance():
    rgb = random_rgb()
    fields = rgb_to_image_fields(rgb, 'mono8')
    grey = np.frombuffer(fields['data'], np.uint8).reshape(rgb.shape[:2])
    np.testing.assert_array_equal(grey, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    # pure red is darker than pure green in luminance (0.299 vs 0.587)
    red_green = np.array([[[255, 0, 0], [0, 255, 0]]], np.uint8)
    grey = np.frombuffer(rgb_to_image_fields(red_green, 'mono8')['data'], np.uint8)
    assert grey[0] == 76 and grey[1] == 150


def test_mono8_decodes_to_three_equal_channels():
    data = bytes([0, 77, 255, 12, 13, 14])
    rgb = image_fields_to_rgb('mono8', 2, 3, 3, 0, data)
    assert rgb.shape == (2, 3, 3)
    np.testing.assert_array_equal(rgb[0, 1], [77, 77, 77])
    np.testing.assert_array_equal(rgb[1, 2], [14, 14, 14])


def test_channel_order_with_known_pixels():
    # one pure-red pixel, then one (10, 20, 30) pixel, in each layout
    red_rgb = image_fields_to_rgb('rgb8', 1, 2, 6, 0, bytes([255, 0, 0, 10, 20, 30]))
    red_bgr = image_fields_to_rgb('bgr8', 1, 2, 6, 0, bytes([0, 0, 255, 30, 20, 10]))
    red_rgba = image_fields_to_rgb('rgba8', 1, 2, 8, 0, bytes([255, 0, 0, 7, 10, 20, 30, 9]))
    red_bgra = image_fields_to_rgb('bgra8', 1, 2, 8, 0, bytes([0, 0, 255, 7, 30, 20, 10, 9]))
    for rgb in (red_rgb, red_bgr, red_rgba, red_bgra):
        np.testing.assert_array_equal(rgb[0, 0], [255, 0, 0])
        np.testing.assert_array_equal(rgb[0, 1], [10, 20, 30])
    # and encoding to bgr8 really swaps the bytes
    fields = rgb_to_image_fields(np.array([[[255, 0, 0]]], np.uint8), 'bgr8')
    assert fields['data'] == bytes([0, 0, 255])
    fields = rgb_to_image_fields(np.array([[[1, 2, 3]]], np.uint8), 'bgra8')
    assert fields['data'] == bytes([3, 2, 1, 255])


@pytest.mark.parametrize('container', [bytes, bytearray, lambda b: array.array('B', b), list,
                                       lambda b: np.frombuffer(b, np.uint8), memoryview])
def test_accepts_every_data_container(container):
    rgb = random_rgb(3, 4)
    fields = rgb_to_image_fields(rgb, 'bgr8')
    back = image_fields_to_rgb('bgr8', 3, 4, fields['step'], 0, container(fields['data']))
    np.testing.assert_array_equal(back, rgb)


def test_result_does_not_alias_message_data():
    data = bytearray(rgb_to_image_fields(random_rgb(2, 2), 'rgb8')['data'])
    rgb = image_fields_to_rgb('rgb8', 2, 2, 6, 0, data)
    before = rgb.copy()
    data[0] ^= 0xFF
    np.testing.assert_array_equal(rgb, before)
    assert rgb.flags.writeable


def test_extra_trailing_data_is_ignored():
    fields = rgb_to_image_fields(random_rgb(2, 3), 'rgb8')
    np.testing.assert_array_equal(decode(dict(fields, data=fields['data'] + b'\x00' * 11)), decode(fields))


@pytest.mark.parametrize('encoding', ['rgb16', '16UC1', 'yuv422', 'bayer_rggb8', '32FC1', 'RGB8', ''])
def test_rejects_unsupported_encoding(encoding):
    with pytest.raises(ImageConversionError) as err:
        image_fields_to_rgb(encoding, 2, 2, 12, 0, bytes(48))
    assert repr(encoding) in str(err.value)
    assert 'unsupported image encoding' in str(err.value)
    for name in SUPPORTED_ENCODINGS:
        assert name in str(err.value)
    with pytest.raises(ImageConversionError, match='unsupported image encoding'):
        rgb_to_image_fields(random_rgb(), encoding)


def test_rejects_step_smaller_than_row():
    with pytest.raises(ImageConversionError) as err:
        image_fields_to_rgb('rgba8', 2, 3, 11, 0, bytes(100))
    message = str(err.value)
    assert 'step 11' in message and '12' in message and "'rgba8'" in message


def test_rejects_short_data():
    with pytest.raises(ImageConversionError) as err:
        image_fields_to_rgb('rgb8', 2, 3, 10, 0, bytes(19))
    message = str(err.value)
    assert '19 bytes' in message and '20' in message


@pytest.mark.parametrize('height,width', [(0, 3), (3, 0), (-1, 3), (3, -2)])
def test_rejects_non_positive_size(height, width):
    with pytest.raises(ImageConversionError) as err:
        image_fields_to_rgb('rgb8', height, width, 9, 0, bytes(27))
    assert 'must be positive' in str(err.value)
    assert f'height={height}' in str(err.value) and f'width={width}' in str(err.value)


def test_is_bigendian_does_not_change_8bit_images():
    fields = rgb_to_image_fields(random_rgb(), 'bgra8')
    np.testing.assert_array_equal(decode(dict(fields, is_bigendian=1)), decode(fields))


def test_rgb_to_fields_rejects_bad_arrays():
    with pytest.raises(ImageConversionError, match='H x W x 3'):
        rgb_to_image_fields(np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageConversionError, match='H x W x 3'):
        rgb_to_image_fields(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ImageConversionError, match='uint8'):
        rgb_to_image_fields(np.zeros((4, 4, 3), np.float32))


def test_resize_shrink_uses_area_and_grow_uses_linear():
    rgb = random_rgb(64, 48, seed=3)
    small = resize_rgb(rgb, 16)
    assert small.shape == (16, 16, 3) and small.dtype == np.uint8 and small.flags.c_contiguous
    np.testing.assert_array_equal(small, cv2.resize(rgb, (16, 16), interpolation=cv2.INTER_AREA))
    assert not np.array_equal(small, cv2.resize(rgb, (16, 16), interpolation=cv2.INTER_LINEAR))

    big = resize_rgb(rgb, 100)
    assert big.shape == (100, 100, 3)
    np.testing.assert_array_equal(big, cv2.resize(rgb, (100, 100), interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(big, cv2.resize(rgb, (100, 100), interpolation=cv2.INTER_AREA))

    # area averaging of a 2x2 checkerboard block gives the mean
    checker = np.zeros((4, 4, 3), np.uint8)
    checker[::2, ::2] = 200
    checker[1::2, 1::2] = 200
    np.testing.assert_array_equal(resize_rgb(checker, 2), np.full((2, 2, 3), 100, np.uint8))


def test_resize_same_size_is_a_copy_and_bad_size_rejected():
    rgb = random_rgb(8, 8)
    same = resize_rgb(rgb, 8)
    np.testing.assert_array_equal(same, rgb)
    assert not np.shares_memory(same, rgb)
    for bad in (0, -3):
        with pytest.raises(ImageConversionError, match='positive'):
            resize_rgb(rgb, bad)


# --- the real ROS 2 message class -------------------------------------------------

@pytest.mark.parametrize('encoding', SUPPORTED_ENCODINGS)
def test_real_sensor_msgs_image_round_trip(encoding):
    from builtin_interfaces.msg import Time
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    rgb = grey_rgb(6, 9) if encoding == 'mono8' else random_rgb(6, 9)
    msg = fill_image_msg(Image(), rgb, encoding, stamp=Time(sec=12, nanosec=345), frame_id='wrist_cam')
    assert msg.encoding == encoding and msg.height == 6 and msg.width == 9
    assert msg.step == 9 * CHANNELS[encoding]
    assert msg.header.frame_id == 'wrist_cam' and msg.header.stamp.sec == 12 and msg.header.stamp.nanosec == 345
    np.testing.assert_array_equal(msg_to_rgb(msg), rgb)

    # through real CDR serialization, as it arrives from another process
    received = deserialize_message(serialize_message(msg), Image)
    np.testing.assert_array_equal(msg_to_rgb(received), rgb)


def test_real_message_with_padded_step_and_rclpy_time_stamp():
    from rclpy.time import Time
    from sensor_msgs.msg import Image

    rgb = random_rgb(4, 5)
    msg = fill_image_msg(Image(), rgb, 'bgr8', stamp=Time(seconds=3, nanoseconds=7))
    assert msg.header.stamp.sec == 3 and msg.header.stamp.nanosec == 7
    padded = pad_rows({'height': 4, 'width': 5, 'data': bytes(msg.data)}, 3, 4)
    msg.step, msg.data = padded['step'], padded['data']
    assert msg.step == 19
    np.testing.assert_array_equal(msg_to_rgb(msg), rgb)

    msg.encoding = '16UC1'
    with pytest.raises(ImageConversionError, match="'16UC1'"):
        msg_to_rgb(msg)


# --- the cv_bridge guard ------------------------------------------------------------
# These use a stand-in cv_bridge module, because the point is which converter is chosen.

def _fake_cv_bridge(monkeypatch, imgmsg_to_cv2):
    module = types.ModuleType('cv_bridge')

    class CvBridge:
        def imgmsg_to_cv2(self, msg, desired_encoding):
            return imgmsg_to_cv2(msg, desired_encoding)

    module.CvBridge = CvBridge
    monkeypatch.setitem(sys.modules, 'cv_bridge', module)
    monkeypatch.setattr(image_conversion, '_cv_bridge', None)


def _msg(rgb, encoding='rgb8'):
    return types.SimpleNamespace(**rgb_to_image_fields(rgb, encoding))


def test_cv_bridge_ignored_without_ros_distro(monkeypatch):
    monkeypatch.delenv('ROS_DISTRO', raising=False)
    _fake_cv_bridge(monkeypatch, lambda msg, enc: pytest.fail('cv_bridge must not be used without ROS_DISTRO'))
    rgb = random_rgb()
    np.testing.assert_array_equal(msg_to_rgb(_msg(rgb, 'bgr8')), rgb)


def test_cv_bridge_preferred_with_ros_distro_and_fallback_on_failure(monkeypatch):
    monkeypatch.setenv('ROS_DISTRO', 'kilted')
    calls = []
    marker = np.full((2, 2, 3), 9, np.uint8)

    def works(msg, encoding):
        calls.append(encoding)
        return marker

    _fake_cv_bridge(monkeypatch, works)
    np.testing.assert_array_equal(msg_to_rgb(_msg(random_rgb())), marker)
    assert calls == ['rgb8']

    def broken(msg, encoding):
        raise AttributeError("'numpy.ndarray' object has no attribute 'tostring'")

    _fake_cv_bridge(monkeypatch, broken)
    rgb = random_rgb()
    np.testing.assert_array_equal(msg_to_rgb(_msg(rgb, 'rgba8')), rgb)


def test_imports_without_rclpy():
    import subprocess
    script = ('import sys; sys.modules["rclpy"] = None; sys.modules["sensor_msgs"] = None\n'
              'from vla_prune_ros.data.images import image_fields_to_rgb\n'
              'print(image_fields_to_rgb("bgr8", 1, 1, 3, 0, bytes([1, 2, 3])).tolist())\n')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[[[3, 2, 1]]]'
