"""sensor_msgs/Image <-> numpy RGB, without cv_bridge.

ROS 2's cv_bridge is not on PyPI and the PyPI ``cv-bridge`` package is a broken
ROS 1 port (it fails with OpenCV 5 and NumPy 2), so the policy's camera input is
converted here. Everything the model sees is an H x W x 3 ``uint8`` RGB array.

Supported encodings are the 8-bit ones cameras actually publish:
``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` and ``mono8``. Anything else is rejected
with an :class:`ImageConversionError` that names the encoding.

On a robot with a full ROS 2 install (``ROS_DISTRO`` set and ``cv_bridge``
importable), :func:`msg_to_rgb` prefers the real cv_bridge, which knows more
encodings; it falls back to the converter here if cv_bridge fails.

This module imports without rclpy: the message helpers are duck-typed on the
fields of ``sensor_msgs/msg/Image``.
"""
import os

import cv2
import numpy as np

# encoding -> (channels, OpenCV code converting that layout to RGB, code converting RGB to it)
# None means "already RGB", no conversion needed.
_ENCODINGS = {
    'rgb8': (3, None, None),
    'bgr8': (3, cv2.COLOR_BGR2RGB, cv2.COLOR_RGB2BGR),
    'rgba8': (4, cv2.COLOR_RGBA2RGB, cv2.COLOR_RGB2RGBA),
    'bgra8': (4, cv2.COLOR_BGRA2RGB, cv2.COLOR_RGB2BGRA),
    'mono8': (1, cv2.COLOR_GRAY2RGB, cv2.COLOR_RGB2GRAY),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


class ImageConversionError(ValueError):
    """An image message cannot be converted (bad encoding, size, step or data length)."""


def _channels_for(encoding: str) -> int:
    if encoding not in _ENCODINGS:
        raise ImageConversionError(
            f'unsupported image encoding {encoding!r}; supported: {", ".join(SUPPORTED_ENCODINGS)}')
    return _ENCODINGS[encoding][0]


def _as_uint8_buffer(data) -> np.ndarray:
    """View message data (bytes, bytearray, array('B'), memoryview, numpy, list) as flat uint8."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).astype(np.uint8, copy=False)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:  # a plain list or tuple of ints
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def check_image_layout(encoding: str, height: int, width: int, step: int, data_size: int) -> tuple[int, int]:
    """(channels, row bytes) when the fields describe a convertible image, else ImageConversionError.

    Touches no pixels, so a subscriber can reject a broken frame at arrival for the cost of a few
    comparisons and convert only the frames it uses.
    """
    channels = _channels_for(encoding)
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f'image size must be positive, got height={height} width={width}')
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageConversionError(
            f'step {step} is smaller than width*channels = {width}*{channels} = {row_bytes} '
            f'for encoding {encoding!r}')
    needed = step * height
    if data_size < needed:
        raise ImageConversionError(
            f'image data has {data_size} bytes, expected at least step*height = {step}*{height} = {needed}')
    return channels, row_bytes


def image_fields_to_rgb(encoding: str, height: int, width: int, step: int, is_bigendian: int,
                        data) -> np.ndarray:
    """Convert the fields of a sensor_msgs/Image to a contiguous H x W x 3 uint8 RGB array.

    ``step`` is the length of one row in bytes; rows may be padded beyond
    ``width * channels`` and the padding is dropped. ``is_bigendian`` only matters
    for multi-byte pixel types; every supported encoding is 8-bit per channel, so
    it is accepted and ignored. The result never aliases ``data``.
    """
    del is_bigendian  # 8-bit channels have no byte order
    flat = _as_uint8_buffer(data)
    channels, row_bytes = check_image_layout(encoding, height, width, step, flat.size)
    height, width, step = int(height), int(width), int(step)
    needed = step * height

    # Drop row padding, then give the pixels their shape.
    pixels = flat[:needed].reshape(height, step)[:, :row_bytes].reshape(height, width, channels)
    to_rgb = _ENCODINGS[encoding][1]
    if to_rgb is None:
        return pixels.copy()  # contiguous, and never aliases the message buffer
    if channels == 1:
        pixels = pixels[:, :, 0]
    rgb = cv2.cvtColor(np.ascontiguousarray(pixels), to_rgb)
    return np.ascontiguousarray(rgb)


_cv_bridge = None  # created on first use, only when a real ROS 2 cv_bridge is present


def _ros2_cv_bridge():
    """The real ROS 2 CvBridge, or None (PyPI's ROS 1 port is never used: no ROS_DISTRO)."""
    global _cv_bridge
    if _cv_bridge is None and os.environ.get('ROS_DISTRO'):
        try:
            from cv_bridge import CvBridge
            _cv_bridge = CvBridge()
        except Exception:  # noqa: BLE001 - any import/constructor failure means "not usable"
            _cv_bridge = False
    return _cv_bridge or None


def msg_to_rgb(msg) -> np.ndarray:
    """Convert a sensor_msgs/Image (or anything with its fields) to H x W x 3 uint8 RGB."""
    bridge = _ros2_cv_bridge()
    if bridge is not None:
        try:
            rgb = bridge.imgmsg_to_cv2(msg, desired_encoding='rgb8')
            if rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8:
                return np.ascontiguousarray(rgb)
        except Exception:  # noqa: BLE001 - fall back to our converter, which gives a clear error
            pass
    return image_fields_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageConversionError(f'expected an H x W x 3 RGB array, got shape {rgb.shape}')
    if rgb.dtype != np.uint8:
        raise ImageConversionError(f'expected dtype uint8, got {rgb.dtype}')
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageConversionError(f'image size must be positive, got shape {rgb.shape}')
    return np.ascontiguousarray(rgb)


def rgb_to_image_fields(rgb: np.ndarray, encoding: str = 'rgb8') -> dict:
    """Encode an H x W x 3 uint8 RGB array as sensor_msgs/Image fields (unpadded rows).

    Returns a dict with height, width, encoding, is_bigendian (0), step and data (bytes).
    """
    channels = _channels_for(encoding)
    rgb = _check_rgb(rgb)
    from_rgb = _ENCODINGS[encoding][2]
    pixels = rgb if from_rgb is None else cv2.cvtColor(rgb, from_rgb)
    height, width = rgb.shape[:2]
    return {
        'height': int(height),
        'width': int(width),
        'encoding': encoding,
        'is_bigendian': 0,
        'step': int(width * channels),
        'data': np.ascontiguousarray(pixels).tobytes(),
    }


def fill_image_msg(msg, rgb: np.ndarray, encoding: str = 'rgb8', stamp=None, frame_id: str = ''):
    """Fill a sensor_msgs/Image in place from an RGB array and return it.

    ``stamp`` may be a ``builtin_interfaces/Time`` message or anything with
    ``to_msg()`` (e.g. ``rclpy.time.Time``); None leaves the header stamp untouched.
    """
    fields = rgb_to_image_fields(rgb, encoding)
    for name, value in fields.items():
        setattr(msg, name, value)
    if stamp is not None:
        msg.header.stamp = stamp.to_msg() if hasattr(stamp, 'to_msg') else stamp
    msg.header.frame_id = frame_id
    return msg


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB image to size x size with OpenCV.

    INTER_AREA when shrinking (both sides shrink or stay, which avoids aliasing),
    INTER_LINEAR otherwise (growing, or growing along one side).
    """
    size = int(size)
    if size <= 0:
        raise ImageConversionError(f'resize size must be positive, got {size}')
    rgb = _check_rgb(rgb)
    height, width = rgb.shape[:2]
    if height == size and width == size:
        return rgb.copy()
    interpolation = cv2.INTER_AREA if size <= min(height, width) else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(rgb, (size, size), interpolation=interpolation))


# sensor_msgs/CompressedImage.format is free text ("jpeg", "png", "rgb8; jpeg compressed bgr8",
# "bgr8; png compressed bgr8", ...): the codec is whichever of these words it names.
COMPRESSED_FORMATS = ('jpeg', 'jpg', 'png')


def compressed_image_to_rgb(format: str, data) -> np.ndarray:  # noqa: A002 - the message field's name
    """Decode a sensor_msgs/CompressedImage (JPEG or PNG) to a contiguous H x W x 3 uint8 RGB array.

    ``format`` is the message's format string; it must name jpeg/jpg or png (compressed depth
    and other codecs are refused). OpenCV decodes to BGR (or grey/BGRA), converted to RGB here.
    Raises :class:`ImageConversionError` (a ValueError) naming the problem.
    """
    text = str(format or '').lower()
    if not any(word in text for word in COMPRESSED_FORMATS):
        raise ImageConversionError(
            f'unsupported compressed image format {format!r}; supported: JPEG or PNG')
    if 'compresseddepth' in text.replace(' ', ''):
        raise ImageConversionError(f'compressed depth images are not supported (format {format!r})')
    buffer = _as_uint8_buffer(data)
    if buffer.size == 0:
        raise ImageConversionError('compressed image has no data')
    decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ImageConversionError(
            f'compressed image data ({buffer.size} bytes) could not be decoded as {format!r}')
    if decoded.dtype != np.uint8:
        raise ImageConversionError(f'compressed image decodes to {decoded.dtype}, expected 8-bit')
    if decoded.ndim == 2:
        rgb = cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    elif decoded.shape[2] == 4:
        rgb = cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB)
    elif decoded.shape[2] == 3:
        rgb = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    else:
        raise ImageConversionError(f'compressed image decodes to {decoded.shape[2]} channels')
    return np.ascontiguousarray(rgb)


def rgb_to_compressed(rgb: np.ndarray, format: str = 'jpeg', quality: int = 90) -> dict:  # noqa: A002
    """Encode an RGB array as sensor_msgs/CompressedImage fields: {'format', 'data' (bytes)}."""
    rgb = _check_rgb(rgb)
    codec = format.lower()
    if codec not in COMPRESSED_FORMATS:
        raise ImageConversionError(f'unsupported compressed image format {format!r}; supported: jpeg, png')
    extension = '.png' if codec == 'png' else '.jpg'
    flags = [] if codec == 'png' else [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    ok, encoded = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), flags)
    if not ok:
        raise ImageConversionError(f'OpenCV could not encode the image as {format!r}')
    return {'format': 'png' if codec == 'png' else 'jpeg', 'data': encoded.tobytes()}
