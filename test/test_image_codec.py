import array
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from mffseg_ros.errors import ImageFormatError
from mffseg_ros.inference.image_codec import (
    DEFAULT_MAX_PIXELS,
    compressed_size,
    decode_compressed,
    decode_image,
    encode_bgr8,
    encode_mono8,
    inspect_compressed,
    inspect_image,
)

H, W = 24, 40


@pytest.fixture(scope='module')
def rgb():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _pack(pixels, step):
    """Rows of `pixels` (HxWxC) written `step` bytes apart, padding filled with junk."""
    row = pixels[0].nbytes
    buf = bytearray(b'\xab' * (step * pixels.shape[0]))
    for r in range(pixels.shape[0]):
        buf[r * step:r * step + row] = pixels[r].tobytes()
    return bytes(buf)


def _as_message(rgb, encoding, bigendian):
    """What a camera driver would put into the message for `rgb`, and the RGB we expect back."""
    wide = encoding.endswith('16')
    values = rgb.astype(np.uint16) * 257 if wide else rgb  # 8-bit v -> 16-bit v*257 -> back to v
    if encoding.startswith('mono'):
        pixels, expected = values[..., :1], np.repeat(rgb[..., :1], 3, axis=2)
    else:
        pixels = values[..., ::-1] if encoding.startswith('bgr') else values
        if 'a' in encoding[:4]:
            pixels = np.dstack([pixels, np.full_like(pixels[..., :1], 7)])
        expected = rgb
    if wide:
        pixels = pixels.astype('>u2' if bigendian else '<u2')
    return np.ascontiguousarray(pixels), expected


EIGHT_BIT = ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8']
SIXTEEN_BIT = ['rgb16', 'bgr16', 'rgba16', 'bgra16', 'mono16']


@pytest.mark.parametrize('encoding, bigendian', [(e, 0) for e in EIGHT_BIT + SIXTEEN_BIT]
                         + [(e, 1) for e in SIXTEEN_BIT])  # byte order matters for 16 bit only
@pytest.mark.parametrize('padding', [0, 3])
def test_every_encoding_decodes_to_rgb(rgb, encoding, padding, bigendian):
    pixels, expected = _as_message(rgb, encoding, bigendian)
    step = pixels[0].nbytes + padding
    out = decode_image(encoding, H, W, step, _pack(pixels, step), is_bigendian=bigendian)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_16_bit_scaling_is_full_range():
    values = np.array([[0, 128, 257, 32896, 65535]], dtype='<u2')
    out = decode_image('mono16', 1, 5, 10, values.tobytes())
    assert out[0, :, 0].tolist() == [0, 0, 1, 128, 255]


def test_rgb8_is_a_view_of_the_message_buffer(rgb):
    """rclpy gives array.array('B'); decoding the common case must not copy it."""
    data = array.array('B', rgb.tobytes())
    out = decode_image('rgb8', H, W, W * 3, data)
    assert np.shares_memory(out, np.frombuffer(data, np.uint8))
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize('encoding, height, width, step, size, problem', [
    ('yuv422', H, W, W * 2, H * W * 2, 'unsupported image encoding'),
    ('32FC1', H, W, W * 4, H * W * 4, 'unsupported image encoding'),
    ('rgb8', 0, W, W * 3, 0, 'empty'),
    ('rgb8', H, 0, 0, 0, 'empty'),
    ('rgb8', H, W, W * 3 - 1, H * (W * 3 - 1), 'step'),
    ('rgb8', H, W, W * 3, H * W * 3 - 1, 'truncated'),
    ('mono16', H, W, W * 2, H * W * 2 + 2, 'too long'),
    ('rgb8', H, W, W, H * W, 'step'),  # a mono8 frame labelled rgb8
])
def test_malformed_images_name_the_problem(encoding, height, width, step, size, problem):
    with pytest.raises(ImageFormatError, match=problem):
        decode_image(encoding, height, width, step, bytes(size))


def _smooth_rgb():
    y, x = np.mgrid[0:H, 0:W]
    return np.dstack([x * 6, y * 10, 255 - x * 6]).astype(np.uint8)


@pytest.mark.parametrize('fmt', ['rgb8; jpeg compressed bgr8', 'bgr8; jpeg compressed bgr8',
                                 'jpeg', 'JPEG', '', 'bgr8'])
def test_jpeg_frames_decode_to_rgb(fmt):
    rgb = _smooth_rgb()
    ok, data = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = decode_compressed(fmt, array.array('B', data.tobytes()))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 3  # lossy, but red is red


def test_png_variants_decode_to_rgb():
    rgb = _smooth_rgb()
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    cases = {
        'bgr8; png compressed bgr8': (bgr, rgb),
        'rgb8; png compressed rgb8': (rgb, rgb),  # publisher stored RGB order: no swap
        'mono8; png compressed ': (rgb[..., 1], np.repeat(rgb[..., 1:2], 3, axis=2)),
        'bgra8; png compressed bgra8': (np.dstack([bgr, np.full((H, W), 9, np.uint8)]), rgb),
        'bgr16; png compressed bgr16': (bgr.astype(np.uint16) * 257, rgb),
        'png': (bgr, rgb),
    }
    for fmt, (stored, expected) in cases.items():
        data = cv2.imencode('.png', stored)[1].tobytes()
        np.testing.assert_array_equal(decode_compressed(fmt, data), expected, err_msg=fmt)


@pytest.mark.parametrize('fmt, make, problem', [
    ('jpeg', lambda j, p: j[:len(j) // 2], 'truncated jpeg'),
    ('png', lambda j, p: p[:len(p) - 20], 'truncated png'),
    ('jpeg', lambda j, p: b'', 'empty'),
    ('jpeg', lambda j, p: b'\x00' * 100, 'neither jpeg nor png'),
    ('jpeg', lambda j, p: p, 'says jpeg but the data is png'),
    ('rgb8; tiff compressed rgb8', lambda j, p: j, 'unsupported compressed format'),
    ('16UC1; compressedDepth png', lambda j, p: p, 'compressedDepth'),
    ('png', lambda j, p: p[:60] + bytes(200) + p[-12:], 'undecodable png'),
])
def test_bad_compressed_frames_name_the_problem(fmt, make, problem):
    bgr = cv2.cvtColor(_smooth_rgb(), cv2.COLOR_RGB2BGR)
    jpeg = cv2.imencode('.jpg', bgr)[1].tobytes()
    png = cv2.imencode('.png', bgr)[1].tobytes()
    with pytest.raises(ImageFormatError, match=problem):
        decode_compressed(fmt, make(jpeg, png))


def test_encoders_round_trip_through_a_real_image_message(rgb):
    from sensor_msgs.msg import Image
    labels = (rgb[..., 0] % 8).astype(np.uint8)
    for (encoding, step, data), expected in [(encode_mono8(labels), np.repeat(labels[..., None], 3, 2)),
                                             (encode_bgr8(rgb), rgb)]:
        msg = Image(height=H, width=W, encoding=encoding, step=step, data=data)
        np.testing.assert_array_equal(
            decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data), expected)
    with pytest.raises(ValueError):
        encode_mono8(labels.astype(np.uint16))
    with pytest.raises(ValueError):
        encode_bgr8(labels)


# --- bounds: sizes come from the header, before any pixel is decoded -----------------------------------
def _fault_inject():
    """scripts/fault_inject.py: its header-forging image builders are the bombs tested here too."""
    spec = importlib.util.spec_from_file_location('fault_inject', Path(__file__).resolve().parents[1] / 'scripts'
                                                  / 'fault_inject.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_FAULT_INJECT = _fault_inject()
_png_declaring = _FAULT_INJECT.png_declaring  # a small PNG declaring width x height (a decompression bomb)
_jpeg_declaring = _FAULT_INJECT.jpeg_declaring  # a real small jpeg whose SOF0 declares width x height


@pytest.mark.parametrize('ext, params', [('.jpg', []), ('.jpg', [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), ('.png', [])])
def test_compressed_size_reads_the_header(ext, params):
    for h, w in ((1, 1), (37, 53), (480, 640)):
        data = cv2.imencode(ext, np.zeros((h, w, 3), np.uint8), params)[1]
        assert compressed_size(data) == (ext.strip('.').replace('jpg', 'jpeg'), w, h)
        assert inspect_compressed('', data) == (h, w)


def test_png_bomb_is_refused_from_its_header():
    bomb = _png_declaring(8000, 8000)
    assert len(bomb) < 100_000  # 64 M pixels in ~62 KB
    with pytest.raises(ImageFormatError, match='8000x8000 = 64000000 pixels is above max_input_pixels 9437184'):
        decode_compressed('png', bomb, max_pixels=DEFAULT_MAX_PIXELS)
    with pytest.raises(ImageFormatError, match='above max_input_pixels'):
        inspect_compressed('png', bomb, max_pixels=DEFAULT_MAX_PIXELS)


def test_jpeg_declaring_a_huge_frame_is_refused_from_its_header():
    with pytest.raises(ImageFormatError, match='65000x60000'):
        decode_compressed('jpeg', _jpeg_declaring(65000, 60000), max_pixels=DEFAULT_MAX_PIXELS)


def test_opencv_errors_become_image_format_errors():
    # beyond OpenCV's own pixel limit: cv2.imdecode raises cv2.error, which must not escape
    with pytest.raises(ImageFormatError, match='undecodable png|decoded to'):
        decode_compressed('png', _png_declaring(100_000, 100_000, rows=1))


@pytest.mark.parametrize('data, problem', [
    (b'\xff\xd8\xff\xda\x00\x08' + bytes(40) + b'\xff\xd9', 'no frame header'),   # scan before any SOF
    (b'\xff\xd8\xff\xe0\x00\x01' + bytes(40) + b'\xff\xd9', 'segment length 1'),
    (b'\x89PNG\r\n\x1a\n' + b'\x00\x00\x00\x0dIDAT' + bytes(30) + b'IEND\xaeB`\x82', 'IHDR is not the first chunk'),
])
def test_corrupt_headers_are_named(data, problem):
    with pytest.raises(ImageFormatError, match=problem):
        decode_compressed('', data)


def test_raw_image_bound_is_checked_before_the_data():
    with pytest.raises(ImageFormatError, match='100000x100000 = 10000000000 pixels is above max_input_pixels'):
        decode_image('rgb8', 100_000, 100_000, 300_000, b'', max_pixels=DEFAULT_MAX_PIXELS)
    assert decode_image('rgb8', 2, 2, 6, bytes(12), max_pixels=4).shape == (2, 2, 3)
    with pytest.raises(ImageFormatError, match='above max_input_pixels 3'):
        decode_image('rgb8', 2, 2, 6, bytes(12), max_pixels=3)


def test_inspect_checks_without_converting(rgb):
    assert inspect_image('bgr8', H, W, W * 3, rgb.tobytes()) == (H, W)
    with pytest.raises(ImageFormatError, match='truncated'):
        inspect_image('bgr8', H, W, W * 3, rgb.tobytes()[:-1])
    jpeg = cv2.imencode('.jpg', rgb)[1].tobytes()
    with pytest.raises(ImageFormatError, match='truncated jpeg'):
        inspect_compressed('jpeg', jpeg[:len(jpeg) // 2])
