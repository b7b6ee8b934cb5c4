"""Generic folder reader, the CholecSeg8k / CholecInstanceSeg readers and the augmentations,
on fixtures generated here in the real sets' layouts."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mffseg_ros.data.datasets import build_dataset, build_datasets
from mffseg_ros.data.endovis import LabelWarning
from mffseg_ros.data.samples import Mirrored, sequence_name
from mffseg_ros.data.transforms import Augment, jpeg_roundtrip, normalize_image, prepare_sample, radial_distortion
from mffseg_ros.errors import DataError


def _frame(h=48, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_folder_reader_with_yaml_mapping(tmp_path):
    (tmp_path / 'img').mkdir()
    (tmp_path / 'lbl').mkdir()
    mask = np.zeros((48, 80), np.uint8)
    mask[:, 40:] = 7
    mask[10:20, 50:60] = 9
    mask[0, 0] = 99  # unlisted -> default
    cv2.imwrite(str(tmp_path / 'img' / 'a.png'), _frame())
    cv2.imwrite(str(tmp_path / 'lbl' / 'a_mask.png'), mask)
    (tmp_path / 'map.yaml').write_text('type: {0: 0, 7: 6, 9: 1, default: 255}\n')
    ds = build_dataset({'kind': 'folder', 'root': str(tmp_path / 'img'), 'masks': str(tmp_path / 'lbl'),
                        'mapping': str(tmp_path / 'map.yaml')})
    s = ds[0]
    assert s['name'] == 'a.png' and s['image'].shape == (48, 80, 3)
    assert s['type'][5, 45] == 6 and s['type'][15, 55] == 1 and s['type'][5, 5] == 0
    assert s['type'][0, 0] == 255 and s['binary'][0, 0] == 255
    assert s['binary'][5, 45] == 1 and s['binary'][5, 5] == 0
    assert (s['parts'] == 255).all()  # not mapped -> ignore
    (tmp_path / 'img' / 'b.png').write_bytes(b'')
    with pytest.raises(DataError, match=r'b_mask\.png'):
        build_dataset({'kind': 'folder', 'root': str(tmp_path / 'img'), 'masks': str(tmp_path / 'lbl'),
                       'mapping': {'binary': {0: 0}}})
    with pytest.raises(DataError, match='out of range'):
        build_dataset({'kind': 'folder', 'root': str(tmp_path / 'img'), 'mapping': {'parts': {1: 9}}})


def _write_cholecseg8k(root):
    clip = root / 'clip_1_2'
    clip.mkdir(parents=True)
    ws = np.full((48, 80, 3), 21, np.uint8)  # liver
    ws[10:20, 10:30] = 31                    # grasper
    ws[30:40, 50:70] = 32                    # L-hook
    ws[20, :] = 255                          # boundary line
    for i in (1, 2):
        cv2.imwrite(str(clip / f'frame_{i}_endo.png'), _frame(seed=i))
        cv2.imwrite(str(clip / f'frame_{i}_endo_watershed_mask.png'), ws)
    vid = root / 'video01'
    (vid / 'frames').mkdir(parents=True)
    (vid / 'masks').mkdir()
    m = np.zeros((36, 64), np.uint8)
    m[5:10, 5:10] = 255
    cv2.imwrite(str(vid / 'frames' / 'video01_000000_frame.png'), _frame(36, 64))
    cv2.imwrite(str(vid / 'masks' / 'video01_000000_mask.png'), m)


def test_cholecseg8k_both_layouts(tmp_path):
    _write_cholecseg8k(tmp_path)
    ds = build_dataset(f'cholecseg8k:{tmp_path}')
    assert len(ds) == 3
    s = ds[0]
    assert s['name'] == 'clip_1_2/frame_1_endo.png'
    assert s['binary'][15, 15] == 1 and s['binary'][35, 60] == 1 and s['binary'][5, 5] == 0
    assert (s['binary'][20] == 255).all()
    assert (s['parts'] == 255).all() and (s['type'] == 255).all()
    assert s['instance'][15, 15] == 1 and s['instance'][35, 60] == 2 and s['instance'][5, 5] == 0  # grasper, hook
    v = ds[2]
    assert v['image'].shape == (36, 64, 3)
    assert v['binary'][7, 7] == 1 and v['binary'][20, 20] == 0 and set(np.unique(v['binary'])) == {0, 1}
    assert len(build_dataset(f'cholecseg8k:{tmp_path / "video01"}')) == 1
    assert len(build_dataset(f'cholecseg8k:{tmp_path}?stride=2')) == 2
    mirrored = build_dataset(f'cholecseg8k:{tmp_path}?mirror=1')
    m = mirrored[0]
    for key in ('image', 'binary', 'parts', 'type', 'instance'):
        np.testing.assert_array_equal(m[key], s[key][:, ::-1])
    assert m['name'] == 'clip_1_2-mirrored/frame_1_endo.png'  # a video of its own for tracking
    assert sequence_name(m) == 'clip_1_2-mirrored'
    assert sequence_name(Mirrored([{'image': s['image'], 'name': 'composite/7'}])[0]) is None  # stays alone
    with pytest.raises(DataError, match='mirror must be 0 or 1'):
        build_dataset(f'cholecseg8k:{tmp_path}?mirror=2')


def test_cholec_instance_polygons(tmp_path):
    vid = tmp_path / 'VID01'
    (vid / 'img_dir').mkdir(parents=True)
    (vid / 'ann_dir').mkdir()
    cv2.imwrite(str(vid / 'img_dir' / 'f0.png'), _frame())
    def square(x, y):
        return [[x, y], [x + 9, y], [x + 9, y + 9], [x, y + 9]]

    shapes = [{'label': 'grasper', 'group_id': 1, 'points': square(2, 2), 'shape_type': 'polygon'},
              {'label': 'grasper', 'group_id': 1, 'points': square(2, 30), 'shape_type': 'polygon'},
              {'label': 'hook', 'group_id': 1, 'points': square(40, 2), 'shape_type': 'polygon'},
              {'label': 'gauze', 'group_id': 1, 'points': square(60, 30), 'shape_type': 'polygon'}]
    (vid / 'ann_dir' / 'f0.json').write_text(json.dumps({'shapes': shapes, 'imageHeight': 48, 'imageWidth': 80}))
    cv2.imwrite(str(vid / 'img_dir' / 'f1.png'), _frame())  # the same instruments listed in another order
    (vid / 'ann_dir' / 'f1.json').write_text(json.dumps({'shapes': shapes[2:3] + shapes[:2]}))
    ds = build_dataset(f'cholec_instance:{tmp_path}')
    with pytest.warns(LabelWarning, match="f0.json: unknown label 'gauze'"):
        s = ds[0]
    assert s['name'] == 'VID01/f0.png'
    assert s['instance'][5, 5] == s['instance'][35, 5] > 0  # two polygons, one grasper
    assert s['instance'][5, 45] not in (0, s['instance'][5, 5]) and s['instance'][25, 25] == 0
    assert (ds[1]['instance'] == s['instance']).all()  # an instrument keeps its id from frame to frame
    assert s['binary'][5, 5] == 1 and s['binary'][35, 65] == 255 and s['binary'][25, 25] == 0
    assert (s['type'] == 255).all()


def _sample(h=60, w=90):
    parts = np.zeros((h, w), np.uint8)
    parts[:, : w // 3] = 1
    return {'image': _frame(h, w), 'parts': parts, 'type': parts.copy(), 'binary': parts.copy(),
            'instance': parts.astype(np.uint16), 'name': 'x'}


def test_prepare_sample_resizes_and_augments_consistently():
    s = _sample()
    out = prepare_sample(s, (32, 64))
    assert out['image'].shape == (32, 64, 3) and out['parts'].shape == (32, 64)
    assert out['instance'].dtype == np.uint16
    aug = Augment(hflip=True, vflip=True, blur=1.0, brightness=0.3, skew=0.2, scale=(1.0, 1.5))
    flipped = 0
    for seed in range(8):
        a = prepare_sample(s, (32, 64), augment=aug, rng=np.random.default_rng(seed))
        assert a['image'].shape == (32, 64, 3)
        assert set(np.unique(a['parts'])) <= {0, 1, 255}
        # labels move with the image: left-third label either on the left or flipped to the right
        valid = a['parts'] != 255
        left = a['parts'][:, :16][valid[:, :16]].mean() if valid[:, :16].any() else 0
        right = a['parts'][:, -16:][valid[:, -16:]].mean() if valid[:, -16:].any() else 0
        flipped += right > left
    assert 0 < flipped < 8
    same = [prepare_sample(s, (32, 64), augment=aug, rng=np.random.default_rng(5))['image'] for _ in range(2)]
    assert np.array_equal(*same)


def test_multi_scale_crops_of_a_larger_frame():
    """frame_size 96x128 with zoom 0.5..1.5 and 32x64 crops: stripes of 5 px in a 60x90 frame are 8 px in
    the fitted frame (scale 1.6), and 4..12 px in the crops, as at frame sizes 0.5x..1.5x of 96x128."""
    h, w = 60, 90
    parts = ((np.arange(w) // 5) % 2).astype(np.uint8)[None].repeat(h, 0)
    s = {'image': _frame(h, w), 'parts': parts, 'type': parts.copy(), 'binary': parts.copy(),
         'instance': parts.astype(np.uint16), 'name': 'x'}

    def stripe_width(out):
        row = out['parts'][16]
        return 64 / (np.count_nonzero(np.diff(row.astype(int))) + 1)

    plain = prepare_sample(s, (32, 64), frame_size=(96, 128))
    assert plain['image'].shape == (32, 64, 3) and 7 <= stripe_width(plain) <= 9
    aug = Augment(hflip=False, vflip=False, scale=(0.5, 1.5))
    widths = [stripe_width(prepare_sample(s, (32, 64), augment=aug, rng=np.random.default_rng(seed),
                                          frame_size=(96, 128))) for seed in range(12)]
    assert min(widths) < 6 and max(widths) > 10 and 3.5 <= min(widths) and max(widths) <= 13


def test_lens_distortion_moves_labels_with_the_image():
    h, w = 60, 80
    image = np.zeros((h, w, 3), np.uint8)
    parts = np.zeros((h, w), np.uint8)
    image[5:15, 5:15] = 255  # a square near a corner: barrel distortion pulls it towards the centre
    parts[5:15, 5:15] = 3
    s = {'image': image, 'parts': parts, 'type': parts.copy(), 'binary': (parts > 0).astype(np.uint8),
         'instance': parts.astype(np.uint16), 'name': 'x'}
    for k in (-0.3, 0.15):
        out = radial_distortion(s, k)
        bright, labelled = out['image'][..., 0] > 127, out['parts'] == 3
        assert (bright == labelled).mean() > 0.995 and labelled.sum() > 30
        ys, xs = np.nonzero(labelled)
        moved = np.hypot(ys.mean() - 9.5, xs.mean() - 9.5)
        assert moved > 0.5, k
    assert not np.array_equal(radial_distortion(s, -0.3)['parts'], radial_distortion(s, 0.15)['parts'])
    assert np.array_equal(radial_distortion(s, 0.0)['parts'], parts)  # k = 0: the identity


def test_jpeg_roundtrip_keeps_size_and_loses_detail():
    rgb = _frame(48, 80)
    low, high = jpeg_roundtrip(rgb, 35), jpeg_roundtrip(rgb, 90)
    assert low.shape == rgb.shape and low.dtype == np.uint8
    err = lambda x: np.abs(x.astype(int) - rgb).mean()
    assert 0 < err(high) < err(low)


def test_normalize_image():
    x = normalize_image(np.full((4, 6, 3), 255, np.uint8), {'mean': [0.5, 0.5, 0.5], 'std': [0.5, 1.0, 2.0]})
    assert x.shape == (3, 4, 6) and x.dtype == np.float32
    assert np.allclose(x[:, 0, 0], [1.0, 0.5, 0.25])


def test_shared_real_sets_when_present():
    root = Path(__file__).resolve().parents[2] / 'shared' / 'data'  # ../shared/data next to the repo
    if not (root / 'cholecseg8k').is_dir():
        pytest.skip('shared data not present')
    ds = build_datasets([f'cholecseg8k:{root}/cholecseg8k?stride=40', f'cholec_instance:{root}/cholec_instance_seg'])
    assert len(ds) == 3 + 10
    s = ds[0]
    assert s['image'].shape == (480, 854, 3) and (s['binary'] == 1).any()


def test_synth_spec_yields_contract_samples():
    ds = build_dataset('synth:?frames=2&seed=3&size=64x96')
    assert len(ds) == 2
    s = ds[1]
    assert s['image'].shape == (64, 96, 3) and s['image'].dtype == np.uint8
    assert s['parts'].shape == s['type'].shape == s['binary'].shape == (64, 96)
    assert s['instance'].dtype == np.uint16
    with pytest.raises(DataError, match='HxW'):
        build_dataset('synth:?frames=2&size=64')
