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
# JPEG start-of-frame markers (SOF0..SOF15 without DHT C4, JPG C8, DAC CC) carry the frame size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM and RSTn stand alone

# Default bound on decoded pixels: a little above 4K video (4096x2304, 16:9 at 4096 wide). A frame
# costs ~3 bytes/px decoded plus the resize, so this keeps one frame well under 100 MB.
DEFAULT_MAX_PIXELS = 4096 * 2304


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


def check_pixels(width, height, max_pixels, what='image'):
    """ImageFormatError when a declared width x height is empty or above `max_pixels` (None: no bound)."""
    if width <= 0 or height <= 0:
        raise ImageFormatError(f'empty {what}: {width}x{height} pixels')
    if max_pixels is not None and width * height > max_pixels:
        raise ImageFormatError(f'{what} of {width}x{height} = {width * height} pixels is above '
                               f'max_input_pixels {max_pixels}')


def _raw_view(encoding, height, width, step, data, is_bigendian, max_pixels):
    """Validated fields -> (HxWxC strided view of `data`, cv2 conversion to RGB or None, bytes per channel)."""
    key = str(encoding).strip().lower()
    if key not in ENCODINGS:
        raise ImageFormatError(f'unsupported image encoding {encoding!r} (supported: {SUPPORTED})')
    channels, depth, conversion = ENCODINGS[key]
    height, width, step = int(height), int(width), int(step)
    check_pixels(width, height, max_pixels, f'{key} image')
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
    return pixels, conversion, depth


def inspect_image(encoding, height, width, step, data, is_bigendian=0, max_pixels=None):
    """(height, width) of a well-formed sensor_msgs/Image without converting a pixel (raises
    ImageFormatError like decode_image): checks an image that is not going to be segmented."""
    pixels, _, _ = _raw_view(encoding, height, width, step, data, is_bigendian, max_pixels)
    return pixels.shape[:2]


def decode_image(encoding, height, width, step, data, is_bigendian=0, max_pixels=None):
    """sensor_msgs/Image fields -> HxWx3 uint8 RGB; `max_pixels` bounds width x height (None: no bound).

    rgb8 without row padding returns a read-only view of `data` (no copy): copy it before drawing.
    Padded rows (step > width * bytes per pixel) are legal; 16-bit encodings are scaled to 8 bit.
    """
    pixels, conversion, depth = _raw_view(encoding, height, width, step, data, is_bigendian, max_pixels)
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


def _jpeg_size(buf):
    """(width, height) from the first start-of-frame segment, walking the marker segments."""
    data = memoryview(np.ascontiguousarray(buf))  # no copy: only a few header bytes are read
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ImageFormatError(f'corrupt jpeg header: no marker at byte {i}')
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        length = int.from_bytes(data[i + 2:i + 4], 'big')
        if marker in _JPEG_SOF:
            if i + 9 > len(data):
                break
            height = int.from_bytes(data[i + 5:i + 7], 'big')
            width = int.from_bytes(data[i + 7:i + 9], 'big')
            return width, height
        if length < 2:
            raise ImageFormatError(f'corrupt jpeg header: segment length {length} at byte {i}')
        i += 2 + length
    raise ImageFormatError('corrupt jpeg header: no frame header (SOF) before the image data')


def _png_size(buf):
    head = buf[:24].tobytes()
    if len(head) < 24 or head[12:16] != b'IHDR':
        raise ImageFormatError('corrupt png header: IHDR is not the first chunk')
    return int.from_bytes(head[16:20], 'big'), int.from_bytes(head[20:24], 'big')


def compressed_size(data):
    """(container, width, height) read from a jpeg/png header WITHOUT decoding the pixels, so a
    small file that declares a huge image (a decompression bomb) can be refused for free."""
    buf = _as_byte_array(data)
    container = _sniff(buf)
    if container is None:
        raise ImageFormatError(f'compressed data ({buf.size} bytes) is neither jpeg nor png')
    width, height = _jpeg_size(buf) if container == 'jpeg' else _png_size(buf)
    return container, width, height


def _checked_container(fmt, buf, max_pixels):
    """(container, height, width) of compressed data that is complete, matches `fmt` and is within bounds."""
    container, _ = _parse_compressed_format(fmt)
    if buf.size == 0:
        raise ImageFormatError(f'empty compressed image (format {fmt!r})')
    actual = _sniff(buf)
    if actual is None:
        raise ImageFormatError(f'compressed data ({buf.size} bytes, format {fmt!r}) is neither jpeg nor png')
    if container and actual != container:
        raise ImageFormatError(f'compressed format says {container} but the data is {actual}')
    _, width, height = compressed_size(buf)
    check_pixels(width, height, max_pixels, f'{actual} image')
    _check_complete(actual, buf)
    return actual, height, width


def inspect_compressed(fmt, data, max_pixels=None):
    """(height, width) of a complete jpeg/png from its header, without decoding (raises ImageFormatError)."""
    _, height, width = _checked_container(fmt, _as_byte_array(data), max_pixels)
    return height, width


def decode_compressed(fmt, data, max_pixels=None):
    """sensor_msgs/CompressedImage (format, data) -> HxWx3 uint8 RGB. jpeg and png only.

    `fmt` may be image_transport's '<encoding>; <jpeg|png> compressed <stored encoding>' or a bare
    'jpeg'/'png'; an empty format or a bare pixel encoding ('bgr8') is sniffed from the data.
    Stored 'rgb*' means the compressed pixels are in RGB order (non-standard publishers); otherwise
    they are BGR, as cv2 and image_transport write.
    """
    _, stored = _parse_compressed_format(fmt)
    buf = _as_byte_array(data)
    actual, height, width = _checked_container(fmt, buf, max_pixels)
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:  # e.g. a header above OpenCV's own pixel limit: bad data, not a node failure
        reason = ' '.join(str(e).split())[-160:]
        raise ImageFormatError(f'undecodable {actual} data ({buf.size} bytes): {reason}') from None
    if image is None or image.size == 0:
        raise ImageFormatError(f'undecodable {actual} data ({buf.size} bytes)')
    if image.shape[:2] != (height, width):
        raise ImageFormatError(f'{actual} decoded to {image.shape[1]}x{image.shape[0]}, header said {width}x{height}')
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
