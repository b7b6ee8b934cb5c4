"""Overlays, contact sheets and PNG files on small generated frames."""
import time
from collections import namedtuple

import cv2
import numpy as np
import pytest

from mffseg_ros.errors import ImageFormatError, MffsegError
from mffseg_ros.inference.instruments import UNKNOWN_TYPE
from mffseg_ros.model.classes import PART_COLORS, TYPE_COLORS
from mffseg_ros.visualize import colorize, contact_sheet, load_rgb, overlay, save_png

# Same fields as mffseg_ros.inference.instances.Tip: overlay() only duck-types them.
FakeTip = namedtuple('FakeTip', 'instance_id type_id u v area_px score source xyz')


def _scene(h=64, w=96):
    rgb = np.full((h, w, 3), 100, np.uint8)
    type_map = np.zeros((h, w), np.uint8)
    type_map[10:40, 20:60] = 3  # a large needle driver
    parts = np.zeros((h, w), np.uint8)
    parts[10:40, 20:45] = 1
    parts[10:40, 45:60] = 3
    return rgb, type_map, parts


def test_overlay_tints_outlines_and_leaves_background():
    rgb, type_map, parts = _scene()
    out = overlay(rgb, type_map, alpha=0.5)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert (out[0, 0] == 100).all()  # background untouched
    inside = out[25, 40].astype(int)
    expected = (100 * 0.5 + np.array(TYPE_COLORS[3]) * 0.5).round()
    assert np.abs(inside - expected).max() <= 1
    assert tuple(out[10, 40]) == TYPE_COLORS[3]  # outline at the region's edge, full colour
    assert (rgb == 100).all()  # input not modified


def test_overlay_draws_part_outlines_and_tips():
    rgb, type_map, parts = _scene()
    with_parts = overlay(rgb, type_map, parts)
    assert tuple(with_parts[25, 45]) == PART_COLORS[3]  # shaft/claspers boundary, inside the tool
    tip = FakeTip(instance_id=1, type_id=3, u=59, v=25, area_px=1200, score=0.9, source='claspers', xyz=None)
    with_tip = overlay(rgb, type_map, parts, tips=[tip])
    changed = np.any(with_tip != with_parts, axis=2)
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 20
    assert abs(ys.mean() - 25) < 20  # the marker and label lie around the tip


def test_overlay_rejects_mismatched_maps_and_ignores_255():
    rgb, type_map, _ = _scene()
    with pytest.raises(ValueError, match='does not match'):
        overlay(rgb, type_map[:10])
    out = overlay(rgb, np.full(type_map.shape, 255, np.uint8),
                  tips=[FakeTip(1, 3, float('nan'), 5.0, 10, 1.0, 'claspers', None)])
    assert (out == rgb).all()  # ignore labels drawn as background; a tip without position skipped


def test_overlay_is_fast_at_full_endoscope_resolution():
    rgb = np.random.default_rng(0).integers(0, 255, (1024, 1280, 3), dtype=np.uint8)
    type_map = np.zeros((1024, 1280), np.uint8)
    type_map[200:600, 300:900] = 2
    parts = (type_map > 0).astype(np.uint8)
    parts[400:600, 700:900] = 3
    tips = [FakeTip(1, 2, 890, 590, 240000, 0.9, 'claspers', None)]
    overlay(rgb, type_map, parts, tips)  # warm-up
    t0 = time.perf_counter()
    for _ in range(3):
        overlay(rgb, type_map, parts, tips)
    per_frame = (time.perf_counter() - t0) / 3
    assert per_frame < 0.25, f'overlay took {per_frame * 1e3:.0f} ms per 1280x1024 frame'


def test_contact_sheet_layout():
    a = np.zeros((20, 30, 3), np.uint8)
    b = np.full((40, 60, 3), 255, np.uint8)  # resized to the first tile's size
    grey = np.full((20, 30), 128, np.uint8)
    sheet = contact_sheet([a, b, grey], cols=2, labels=['a', 'b', None], pad=2)
    assert sheet.shape == (2 * 20 + 3 * 2, 2 * 30 + 3 * 2, 3)
    assert (sheet[2 + 15, 2 + 30 + 2 + 15] == 255).all()  # tile b, below its caption
    assert (sheet[2 + 20 + 2 + 10, 2 + 10] == 128).all()  # grey tile, second row


def test_colorize_tasks():
    lm = np.array([[0, 1], [3, 255]], np.uint8)
    assert tuple(colorize(lm, 'parts')[1, 0]) == PART_COLORS[3]
    assert tuple(colorize(lm, 'type')[1, 1]) == TYPE_COLORS[0]  # ignore drawn as background
    assert tuple(colorize(lm, 'binary')[0, 1]) == (255, 255, 255)


def test_save_png_round_trip_and_errors(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB
    path = save_png(tmp_path / 'sub' / 'x.png', rgb)
    assert (load_rgb(path) == rgb).all()
    assert tuple(cv2.imread(str(path))[0, 0]) == (0, 0, 200)  # stored as BGR on disk, i.e. really red
    labels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert (cv2.imread(str(save_png(tmp_path / 'l.png', labels)), cv2.IMREAD_UNCHANGED) == labels).all()
    (tmp_path / 'file').write_text('not a folder')
    with pytest.raises(MffsegError, match='file'):
        save_png(tmp_path / 'file' / 'x.png', rgb)
    (tmp_path / 'bad.png').write_bytes(b'not a png')
    with pytest.raises(ImageFormatError, match='bad.png'):
        load_rgb(tmp_path / 'bad.png')
    with pytest.raises(ImageFormatError, match='no such'):
        load_rgb(tmp_path / 'missing.png')


# --- `mffseg segment`: real weights file, real Segmenter, PNGs read back ---------------------------

@pytest.fixture(scope='module')
def tiny_weights(tmp_path_factory):
    import torch

    from mffseg_ros.model import MFFNet, save_weights
    torch.manual_seed(0)
    return save_weights(tmp_path_factory.mktemp('w') / 'tiny.safetensors', MFFNet(), {'input_scale': 0.25})


def test_segment_cli_images_and_folders(tiny_weights, tmp_path, capsys):
    from mffseg_ros.cli import main
    rng = np.random.default_rng(3)
    (tmp_path / 'imgs').mkdir()
    for name, (h, w) in {'a.png': (70, 100), 'b.jpg': (64, 64)}.items():  # odd size: not a multiple of 32
        cv2.imwrite(str(tmp_path / 'imgs' / name), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    single = tmp_path / 'c.png'
    cv2.imwrite(str(single), rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
    out = tmp_path / 'out'
    rc = main(['segment', str(tmp_path / 'imgs'), str(single), '--weights', str(tiny_weights),
               '--out', str(out), '--device', 'cpu'])
    assert rc == 0
    for stem, (h, w) in {'a': (70, 100), 'b': (64, 64), 'c': (48, 80)}.items():
        assert load_rgb(out / f'{stem}_overlay.png').shape == (h, w, 3)
        parts = cv2.imread(str(out / f'{stem}_parts.png'), cv2.IMREAD_UNCHANGED)
        types = cv2.imread(str(out / f'{stem}_type.png'), cv2.IMREAD_UNCHANGED)
        assert parts.shape == types.shape == (h, w) and parts.max() <= 3
        assert set(np.unique(types)) <= set(range(8)) | {UNKNOWN_TYPE}  # voted types; 255 = unknown


def test_segment_cli_generated_frame(tiny_weights, tmp_path, capsys):
    from mffseg_ros.cli import main
    from mffseg_ros.tools.segment_image import generated_sample
    sample = generated_sample(seed=1)
    assert sample['image'].dtype == np.uint8 and sample['type'].max() > 0 and sample['parts'].max() == 3
    assert main(['segment', '--weights', str(tiny_weights), '--out', str(tmp_path), '--device', 'cpu']) == 0
    assert 'generated frame' in capsys.readouterr().out
    (overlay_png,) = tmp_path.glob('*_overlay.png')
    sheet = load_rgb(overlay_png)
    h, w = generated_sample(seed=0)['image'].shape[:2]
    assert sheet.shape[0] > h and sheet.shape[1] > 2 * w  # prediction | ground truth


def test_segment_cli_errors_name_the_path(tiny_weights, tmp_path, capsys):
    from mffseg_ros.cli import main
    missing = tmp_path / 'missing.png'
    assert main(['segment', str(missing), '--weights', str(tiny_weights), '--out', str(tmp_path)]) == 2
    assert str(missing) in capsys.readouterr().err
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'\x89PNG but not really')
    assert main(['segment', str(broken), '--weights', str(tiny_weights), '--out', str(tmp_path),
                 '--device', 'cpu']) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and 'Traceback' not in err
    assert main(['segment', '--min-score', '1.5', '--weights', str(tiny_weights), '--out', str(tmp_path)]) == 2
    assert '--min-score must be between 0 and 1, got 1.5' in capsys.readouterr().err


def test_segment_cli_min_score_drops_faint_instruments(tiny_weights, tmp_path, capsys):
    """The tiny test model's P(instrument) is low: at 0 its regions are instruments, at 1 none is."""
    from mffseg_ros.cli import main
    counts = {}
    for score in ('0', '1'):
        assert main(['segment', '--weights', str(tiny_weights), '--out', str(tmp_path / score), '--device', 'cpu',
                     '--min-score', score]) == 0
        counts[score] = capsys.readouterr().out.count(' tip at ')
    assert counts['0'] >= 1 and counts['1'] == 0
