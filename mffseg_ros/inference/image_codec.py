"""Decode sensor_msgs/Image and CompressedImage payloads to RGB arrays, and encode outputs.

Pure numpy/cv2 (no rclpy): the node passes the message fields in. Every malformed input raises
ImageFormatError naming the problem, so the node can log it, count it and skip the frame.
"""
import array

import cv2
import numpy as np

from mffseg_ros.errors import ImageFormatError

# encoding -> (channels, bytes per channel, cv2 conversion to RGB or None when already RGB)
ENCODINGS = {
    'rgb8': (3, 1, None),
    'bgr8': (3, 1, cv2.COLOR_BGR2RGB),
    'rgba8': (4, 1, cv2.COLOR_RGBA2RGB),
    'bgra8': (4, 1, cv2.COLOR_BGRA2RGB),
    'mono8': (1, 1, cv2.COLOR_GRAY2RGB),
    'rgb16': (3, 2, None),
    'bgr16': (3, 2, cv2.COLOR_BGR2RGB),
    'rgba16': (4, 2, cv2.COLOR_RGBA2RGB),
    'bgra16': (4, 2, cv2.COLOR_BGRA2RGB),
    'mono16': (1, 2, cv2.COLOR_GRAY2RGB),
}
SUPPORTED = ', '.join(ENCODINGS)

_JPEG_MAGIC = b'\xff\xd8\xff'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _as_byte_array(data):
    """A zero-copy uint8 view of bytes, bytearray, memoryview or array.array('B') (rclpy's type)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):  # a plain list of ints
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)
        except (TypeError, ValueError, OverflowError) as e:
            raise ImageFormatError(f'image data is not a byte buffer ({type(data).__name__}): {e}') from None


def _to_uint8(values):
    """16-bit -> 8-bit, full range to full range, rounded (65535 -> 255, 257 -> 1)."""
    return cv2.convertScaleAbs(values, alpha=255.0 / 65535.0)


def decode_image(encoding, height, width, step, data, is_bigendian=0):
    """sensor_msgs/Image fields -> HxWx3 uint8 RGB.

    rgb8 without row padding returns a read-only view of `data` (no copy): copy it before drawing.
    Padded rows (step > width * bytes per pixel) are legal; 16-bit encodings are scaled to 8 bit.
    """
    key = str(encoding).strip().lower()
    if key not in ENCODINGS:
        raise ImageFormatError(f'unsupported image encoding {encoding!r} (supported: {SUPPORTED})')
    channels, depth, conversion = ENCODINGS[key]
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageFormatError(f'empty {key} image: {width}x{height} pixels')
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise ImageFormatError(f'{key} image step {step} is smaller than width {width} x {channels * depth} '
                               f'bytes per pixel = {row_bytes}')
    buf = _as_byte_array(data)
    if buf.size != step * height:
        kind = 'truncated' if buf.size < step * height else 'too long'
        raise ImageFormatError(f'{key} image data {kind}: {buf.size} bytes, expected step {step} x height '
                               f'{height} = {step * height}')
    dtype = np.dtype(np.uint8) if depth == 1 else np.dtype('>u2' if is_bigendian else '<u2')
    # A strided view: rows `step` bytes apart, so padded rows cost no copy.
    pixels = np.ndarray((height, width, channels), dtype=dtype, buffer=buf,
                        strides=(step, channels * depth, depth))
    if depth == 2:
        # One native-order, contiguous copy: cv2 cannot read big-endian or odd row strides.
        pixels = _to_uint8(np.ascontiguousarray(pixels, dtype=np.uint16))
    if conversion is None:
        return pixels if pixels.flags.c_contiguous else np.ascontiguousarray(pixels)
    return cv2.cvtColor(pixels, conversion)


def _parse_compressed_format(fmt):
    """'rgb8; jpeg compressed bgr8' -> ('jpeg', 'bgr8'); 'png' -> ('png', '')."""
    text = str(fmt or '').strip().lower()
    if 'compresseddepth' in text.replace(' ', ''):
        raise ImageFormatError(f'compressed format {fmt!r} is a depth image (compressedDepth), not a camera image')
    tail = text.split(';', 1)[-1]  # the part after the original encoding, if any
    words = tail.replace(',', ' ').split()
    container = ''
    if 'jpeg' in words or 'jpg' in words:
        container = 'jpeg'
    elif 'png' in words:
        container = 'png'
    elif text and text not in ENCODINGS:  # a bare pixel encoding ('bgr8') names no container: sniff it
        raise ImageFormatError(f'unsupported compressed format {fmt!r} (supported: jpeg, png)')
    stored = words[words.index('compressed') + 1] if 'compressed' in words[:-1] else ''
    return container, stored


def _sniff(buf):
    head = buf[:8].tobytes()
    if head.startswith(_JPEG_MAGIC):
        return 'jpeg'
    if head.startswith(_PNG_MAGIC):
        return 'png'
    return None


def _check_complete(container, buf):
    """libjpeg decodes a truncated stream into a grey-filled image with only a warning: catch it here."""
    if container == 'jpeg':
        tail = np.trim_zeros(buf[-64:], 'b').tobytes()  # some encoders pad after the EOI marker
        if not tail.endswith(b'\xff\xd9'):
            raise ImageFormatError(f'truncated jpeg: no end-of-image marker ({buf.size} bytes)')
    elif b'IEND' not in buf[-16:].tobytes():
        raise ImageFormatError(f'truncated png: no IEND chunk ({buf.size} bytes)')


def decode_compressed(fmt, data):
    """sensor_msgs/CompressedImage (format, data) -> HxWx3 uint8 RGB. jpeg and png only.

    `fmt` may be image_transport's '<encoding>; <jpeg|png> compressed <stored encoding>' or a bare
    'jpeg'/'png'; an empty format or a bare pixel encoding ('bgr8') is sniffed from the data.
    Stored 'rgb*' means the compressed pixels are in RGB order (non-standard publishers); otherwise
    they are BGR, as cv2 and image_transport write.
    """
    container, stored = _parse_compressed_format(fmt)
    buf = _as_byte_array(data)
    if buf.size == 0:
        raise ImageFormatError(f'empty compressed image (format {fmt!r})')
    actual = _sniff(buf)
    if actual is None:
        raise ImageFormatError(f'compressed data ({buf.size} bytes, format {fmt!r}) is neither jpeg nor png')
    if container and actual != container:
        raise ImageFormatError(f'compressed format says {container} but the data is {actual}')
    _check_complete(actual, buf)
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageFormatError(f'undecodable {actual} data ({buf.size} bytes)')
    if image.dtype == np.uint16:
        image = _to_uint8(image)
    elif image.dtype != np.uint8:
        raise ImageFormatError(f'unsupported {actual} pixel type {image.dtype}')
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    in_rgb_order = stored.startswith('rgb')
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB if in_rgb_order else cv2.COLOR_BGRA2RGB)
    if image.shape[2] == 3:
        return image if in_rgb_order else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    raise ImageFormatError(f'unsupported {actual} with {image.shape[2]} channels')


def _byte_buffer(arr):
    """array.array('B') is what rclpy stores in uint8[] fields: assigning one skips a per-element check."""
    out = array.array('B')
    out.frombytes(memoryview(np.ascontiguousarray(arr)).cast('B'))
    return out


def encode_mono8(arr):
    """HxW uint8 -> (encoding, step, data) for a sensor_msgs/Image."""
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(f'mono8 needs an HxW uint8 array, got {arr.shape} {arr.dtype}')
    return 'mono8', arr.shape[1], _byte_buffer(arr)


def encode_bgr8(rgb):
    """HxWx3 uint8 RGB -> (encoding, step, data) for a bgr8 sensor_msgs/Image."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f'bgr8 needs an HxWx3 uint8 RGB array, got {rgb.shape} {rgb.dtype}')
    return 'bgr8', rgb.shape[1] * 3, _byte_buffer(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
