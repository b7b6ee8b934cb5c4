"""Real pixels in synthetic scenes (data/real_pixels.py) on a CholecSeg8k-layout folder generated here:
rendered tools over real frames keep their full labels, real tools are binary-only, edges are ignored."""
import cv2
import numpy as np
import pytest

from mffseg_ros.data.datasets import build_dataset
from mffseg_ros.data.real_pixels import CompositeDataset, paste_real_tools, paste_synthetic_tools
from mffseg_ros.errors import DataError

GREEN = (40, 200, 60)  # the real frames' "tissue": no rendered scene is this colour


@pytest.fixture(scope='module')
def real_root(tmp_path_factory):
    """data root with cholecseg8k/video01 (frames/ + 0/255 masks): green frames, a grey real tool entering
    from the left border."""
    root = tmp_path_factory.mktemp('real')
    vid = root / 'cholecseg8k' / 'video01'
    (vid / 'frames').mkdir(parents=True)
    (vid / 'masks').mkdir()
    for i in range(3):
        img = np.zeros((90, 160, 3), np.uint8)
        img[:] = GREEN[::-1]  # BGR on disk
        mask = np.zeros((90, 160), np.uint8)
        y = 20 + 15 * i
        img[y:y + 12, :70] = (128, 128, 128)
        mask[y:y + 12, :70] = 255
        cv2.imwrite(str(vid / 'frames' / f'video01_{i:06d}_frame.png'), img)
        cv2.imwrite(str(vid / 'masks' / f'video01_{i:06d}_mask.png'), mask)
    return root


def _synth(h=48, w=64):
    image = np.full((h, w, 3), 90, np.uint8)
    parts = np.zeros((h, w), np.uint8)
    parts[10:30, 20:50] = 1
    parts[30:40, 20:50] = 3
    image[parts > 0] = 200
    types = np.where(parts > 0, 4, 0).astype(np.uint8)
    return {'image': image, 'parts': parts, 'type': types, 'binary': (parts > 0).astype(np.uint8),
            'instance': (parts > 0).astype(np.uint16), 'name': 's'}


def test_synthetic_tools_on_a_real_frame_keep_full_labels_and_the_frame_its_binary_tools():
    synth = _synth()
    back = np.zeros((48, 64, 3), np.uint8)
    back[:] = GREEN
    back_binary = np.zeros((48, 64), np.uint8)
    back_binary[40:, :10] = 1   # the frame's own instrument, outside the rendered tool
    back_binary[0, :] = 255     # unknown in the frame
    out = paste_synthetic_tools(back, back_binary, synth)
    inner = (slice(14, 26), slice(24, 46))
    assert (out['parts'][inner] == 1).all() and (out['type'][inner] == 4).all() and (out['binary'][inner] == 1).all()
    assert (out['parts'][32:38, 24:46] == 3).all()
    assert (out['image'][inner] > 150).all()  # the tool's pixels (brightness-matched, still bright)
    assert tuple(out['image'][45, 60]) == GREEN  # the real frame elsewhere
    # the frame's own instrument: binary 1, parts/type unknown; its background: 0 in every task
    assert (out['binary'][42:, :8] == 1).all() and (out['parts'][42:, :8] == 255).all()
    assert out['parts'][45, 60] == 0 and out['type'][45, 60] == 0 and out['binary'][45, 60] == 0
    assert (out['binary'][0, 12:] == 255).all()
    # the blended edge of the rendered tool is ignored
    assert (out['parts'][8:12, 35] == 255).all() and out['parts'][12, 35] == 1 and out['parts'][7, 35] == 0


def test_real_tools_pasted_are_binary_only_and_in_front():
    synth = _synth()
    tool = np.zeros((48, 64, 3), np.uint8)
    tool[:] = 30
    binary = np.zeros((48, 64), np.uint8)
    binary[15:25, :] = 1  # crosses the rendered tool, border to border
    out = paste_real_tools(synth, tool, binary, np.random.default_rng(0))
    on = out['binary'] == 1
    real = (out['parts'] == 255) & on
    assert real.sum() >= 10 * 50  # the pasted band (flipped or not, it is still a full-width band)
    rows = np.flatnonzero(real.all(axis=1))
    assert len(rows) >= 6 and (out['image'][rows[len(rows) // 2]] < 60).all()
    assert (out['instance'][real] == 0).all()
    # the rendered tool keeps its labels where the real one (rows 15-24, or 23-32 flipped, and a 2-px
    # ring) does not cover it: claspers at rows 36-39
    assert (out['parts'][36:40, 24:46] == 3).all()


def test_composite_spec_mixes_modes_deterministically(real_root):
    ds = build_dataset(f'composite:{real_root}?frames=12&seed=1&size=64x80&num_instruments=1,2')
    assert len(ds) == 12
    modes = [ds[i]['name'].split('/')[1] for i in range(12)]
    assert set(modes) <= {'real_background', 'real_tools', 'both'} and len(set(modes)) >= 2
    for i, mode in enumerate(modes):
        s = ds[i]
        assert s['image'].shape == (64, 80, 3) and s['parts'].shape == (64, 80)
        green = (np.abs(s['image'].astype(int) - GREEN).sum(-1) < 30).mean()
        if mode == 'real_tools':
            assert green < 0.05  # a rendered scene
        else:
            assert green > 0.2  # the real frame shows
        if mode != 'real_background':
            assert ((s['binary'] == 1) & (s['parts'] == 255)).any()  # a pasted real tool
    again = build_dataset(f'composite:{real_root}?frames=12&seed=1&size=64x80&num_instruments=1,2')
    assert np.array_equal(again[5]['image'], ds[5]['image']) and np.array_equal(again[5]['parts'], ds[5]['parts'])


def test_composite_errors(tmp_path, real_root):
    with pytest.raises(DataError, match='cholecseg8k'):
        CompositeDataset(tmp_path, 4, size=(64, 80))
    with pytest.raises(DataError, match='mode_weights'):
        CompositeDataset(real_root, 4, size=(64, 80), mode_weights=(1, 1))
    with pytest.raises(DataError, match='frames=N'):
        build_dataset(f'composite:{real_root}')
