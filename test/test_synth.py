"""Synthetic stereo scenes: rig conventions, determinism, label/tip consistency, stereo geometry."""
import pickle

import cv2
import numpy as np
import pytest

from mffseg_ros.data.synth import SceneGenerator, StereoRig, SynthDataset
from mffseg_ros.errors import DataError, MffsegError
from mffseg_ros.model.classes import NUM_CLASSES, PART_CLASPERS

RIG = StereoRig.endovis_like(scale=0.15625)  # 200 x 160: small enough for CI, big enough for jaws


@pytest.fixture(scope='module')
def frames():
    """Twelve clean frames, every one a new episode (new tools, poses, canvas)."""
    gen = SceneGenerator(RIG, seed=11, episode_length=1, effects=0.0, texture_pool=3)
    return [gen.frame(i) for i in range(12)]


def _project(P, xyz):
    uvw = P @ np.append(xyz, 1.0)
    return uvw[:2] / uvw[2]


def test_rig_is_endovis_like_and_follows_camera_info_convention():
    full = StereoRig.endovis_like()
    assert (full.width, full.height) == (1280, 1024)
    assert 1030 < full.fx < 1090 and 0.0040 < full.baseline < 0.0046
    assert abs(full.cx - 640) < 20 and abs(full.cy - 512) < 20
    assert full.P_right[0, 3] == pytest.approx(-full.fx * full.baseline)
    assert np.allclose(full.P_left[:, :3], full.K) and full.P_left[0, 3] == 0
    info = full.camera_info('right')
    assert info['width'] == 1280 and info['height'] == 1024 and info['distortion_model'] == 'plumb_bob'
    assert len(info['K']) == 9 and len(info['R']) == 9 and len(info['P']) == 12 and info['D'] == [0.0] * 5
    assert info['P'][3] == pytest.approx(-full.fx * full.baseline) and info['R'] == np.eye(3).ravel().tolist()
    half = full.scaled(0.5)
    assert (half.width, half.height) == (640, 512) and half.fx == pytest.approx(full.fx / 2)
    # A point keeps its place in the image (pixel centres scale like cv2.resize) and its 3-D meaning.
    point = np.array([0.01, -0.005, 0.08])
    assert np.allclose((full.project(point) + 0.5) / 2 - 0.5, half.project(point))
    assert np.allclose(_project(half.P_right, point), half.project(point, 'right'))
    assert half.project(point)[0] - half.project(point, 'right')[0] == pytest.approx(half.disparity(0.08))


def test_frames_are_deterministic_and_order_free():
    a = SceneGenerator(RIG, seed=5, episode_length=4)
    b = SceneGenerator(RIG, seed=5, episode_length=4)
    later_first = b.frame(6)
    b.frame(1)
    for x, y in ((a.frame(6), later_first), (a.frame(6), b.frame(6))):
        assert np.array_equal(x.left, y.left) and np.array_equal(x.right, y.right)
        for k in ('binary', 'parts', 'type', 'instance'):
            assert np.array_equal(x.labels_left[k], y.labels_left[k])
            assert np.array_equal(x.labels_right[k], y.labels_right[k])
        assert x.tips == y.tips
    other = SceneGenerator(RIG, seed=6, episode_length=4).frame(6)
    assert not np.array_equal(other.left, later_first.left)


def test_labels_follow_the_sample_contract(frames):
    for f in frames:
        for image, lab in ((f.left, f.labels_left), (f.right, f.labels_right)):
            assert image.shape == (RIG.height, RIG.width, 3) and image.dtype == np.uint8
            assert lab['instance'].dtype == np.uint16 and lab['parts'].dtype == np.uint8
            tool = lab['parts'] > 0
            assert np.array_equal(lab['binary'], tool.astype(np.uint8))
            assert np.array_equal(lab['type'] > 0, tool) and np.array_equal(lab['instance'] > 0, tool)
            assert lab['parts'].max() < NUM_CLASSES['parts'] and lab['type'].max() < NUM_CLASSES['type']
            for tip in f.tips:  # one type per instance, the tip's
                types = np.unique(lab['type'][lab['instance'] == tip['instance_id']])
                assert set(types) <= {tip['type_id']}
    drawn = {tip['type_id'] for f in frames for tip in f.tips}
    assert len(drawn) >= 4, drawn  # the type head gets several types to tell apart


@pytest.mark.parametrize('canvas', ['circle', 'octagon', 'ellipse'])
def test_black_canvas_hides_image_and_labels(canvas):
    gen = SceneGenerator(RIG, seed=1, canvas=canvas, num_instruments=3, episode_length=1)
    for i in range(3):
        f = gen.frame(i)
        grey = gen.episode(i).effects.canvas_grey  # the sensor's black level: near black, one flat value
        assert grey < 16
        for image, lab in ((f.left, f.labels_left), (f.right, f.labels_right)):
            corners = (slice(0, 3), slice(0, 3)), (slice(-3, None), slice(-3, None))
            for rows, cols in corners:  # these field stops always hide the corners
                assert (image[rows, cols] == grey).all() and not lab['parts'][rows, cols].any()
            assert (image[RIG.height // 2, RIG.width // 2] != grey).any()


def test_tip_projects_onto_its_own_claspers_in_both_eyes(frames):
    """The true 3-D tip (centroid of the jaws) projected through P lands on clasper pixels of its
    instance, left and right; and that holds for most tools whose jaws are seen."""
    seen = landed = 0
    for f in frames:
        for tip in f.tips:
            xyz = np.array(tip['xyz'])
            ok = True
            for P, lab, uv, side in ((RIG.P_left, f.labels_left, tip['uv_left'], 'left'),
                                     (RIG.P_right, f.labels_right, tip['uv_right'], 'right')):
                u, v = _project(P, xyz)
                assert np.allclose((u, v), uv, atol=1e-6)
                jaws = (lab['parts'] == PART_CLASPERS) & (lab['instance'] == tip['instance_id'])
                iu, iv = int(round(u)), int(round(v))
                inside = 0 <= iu < RIG.width and 0 <= iv < RIG.height
                on_jaws = inside and bool(jaws[iv, iu])
                assert tip[f'visible_{side}'] == on_jaws
                ok &= on_jaws and jaws.sum() >= 10
            if all(((lab['parts'] == PART_CLASPERS) & (lab['instance'] == tip['instance_id'])).sum() >= 25
                   for lab in (f.labels_left, f.labels_right)):
                seen += 1
                landed += ok
            if tip['visible']:
                assert ok
    assert seen >= 8, seen
    assert landed >= 0.75 * seen, (landed, seen)


def test_disparity_matches_depth(frames):
    """Every left pixel's surface reappears in the right image at u - f*B/z with the same depth and
    label, and a tip's disparity is f*B/z."""
    fb = RIG.fx * RIG.baseline
    for f in frames:
        for tip in f.tips:
            d = tip['uv_left'][0] - tip['uv_right'][0]
            assert d == pytest.approx(fb / tip['xyz'][2], rel=1e-9)
            assert tip['uv_left'][1] == pytest.approx(tip['uv_right'][1])
    agree_depth, agree_label, total = 0, 0, 0
    for f in frames:
        v, u = np.mgrid[0:RIG.height, 0:RIG.width]
        ur = np.round(u - fb / f.depth_left).astype(int)
        ok = (ur >= 0) & (ur < RIG.width) & (f.labels_left['binary'] == f.labels_left['binary'])
        zl, zr = f.depth_left[ok], f.depth_right[v[ok], ur[ok]]
        agree_depth += (np.abs(zr - zl) < 0.02 * zl).sum()
        agree_label += (f.labels_left['instance'][ok] == f.labels_right['instance'][v[ok], ur[ok]]).sum()
        total += ok.sum()
    # Occlusion edges and half-occluded strips are the only disagreements.
    assert agree_depth > 0.93 * total and agree_label > 0.95 * total


def test_tissue_colour_is_stereo_consistent():
    """Without effects, the right image is the left one warped by the true disparity: matching at the
    true disparity beats matching at a disparity off by a few pixels."""
    gen = SceneGenerator(RIG, seed=3, num_instruments=0, effects=0.0, canvas='full', episode_length=1)
    v, u = np.mgrid[0:RIG.height, 0:RIG.width]
    for i in range(4):  # episodes with different tissue flips
        f = gen.frame(i)
        true = RIG.fx * RIG.baseline / f.depth_left
        errors = []
        for offset in (0, 3, -3):
            ur = np.round(u - true + offset).astype(int)
            ok = (ur >= 0) & (ur < RIG.width)
            diff = f.left[ok].astype(int) - f.right[v[ok], ur[ok]].astype(int)
            errors.append(np.abs(diff).mean())
        assert errors[0] < 0.6 * min(errors[1:]), (i, errors)


def test_motion_is_smooth_and_tools_enter_and_leave():
    gen = SceneGenerator(RIG, seed=2, episode_length=400)
    steps, in_view, last = [], [], []
    for i in range(0, 1200, 2):
        tips = gen.tips_3d(i)
        uv = [RIG.project(xyz) for _, _, xyz in tips]
        in_view.append([0 <= a < RIG.width and 0 <= b < RIG.height for a, b in uv])
        if i % 400:  # within an episode
            steps += [np.linalg.norm(np.subtract(xyz, prev)) for (_, _, xyz), prev in zip(tips, last)]
        last = [xyz for _, _, xyz in tips]
    assert max(steps) < 0.01  # metres per 2 frames, no jumps (new episodes jump 1-7 cm); the tip sits ~35 mm
    # beyond the bending wrist, so a fast bend moves it several mm
    changes = sum(a != b for prev, cur in zip(in_view, in_view[1:]) if len(prev) == len(cur)
                  for a, b in zip(prev, cur))
    assert changes >= 2  # tips leave the view and come back within episodes


def test_dataset_yields_contract_samples_and_batches_with_torch():
    torch = pytest.importorskip('torch')
    ds = SynthDataset(6, size=(64, 80), seed=4, eye='both')
    assert len(ds) == 6 and len(pickle.dumps(ds)) < 4096
    s = ds[1]
    assert s['image'].shape == (64, 80, 3) and s['image'].dtype == np.uint8
    assert s['parts'].shape == (64, 80) and s['instance'].dtype == np.uint16 and s['name'].endswith('right')
    assert np.array_equal(ds[-5]['image'], s['image'])
    assert np.array_equal(SynthDataset(6, size=(64, 80), seed=4, eye='both')[1]['type'], s['type'])
    stereo = SceneGenerator(ds.rig, seed=4, episode_length=1).frame(1)  # one eye = that eye of the pair
    assert np.array_equal(stereo.right, s['image']) and np.array_equal(stereo.labels_right['parts'], s['parts'])
    with pytest.raises(IndexError):
        ds[6]
    loader = torch.utils.data.DataLoader(pickle.loads(pickle.dumps(ds)), batch_size=3)
    batch = next(iter(loader))
    assert batch['image'].shape == (3, 64, 80, 3) and len(batch['name']) == 3


@pytest.mark.parametrize('kwargs', [dict(eye='middle'), dict(size=(4, 4)), dict(num_instruments=(3, 1)),
                                    dict(types=(0, 9)), dict(canvas='oval'), dict(colour=1),
                                    dict(num_instruments='one'), dict(types='1,x')])
def test_bad_settings_raise_a_user_error(kwargs):
    with pytest.raises(DataError) as err:
        SynthDataset(4, **kwargs)
    assert isinstance(err.value, MffsegError) and str(err.value).startswith('synth ')


def test_lab_backgrounds_look_like_lab_scenes():
    """Lab style: every background is a pad, foam, phantom, drape or cavity, not red tissue; each kind
    has its own signature."""
    from mffseg_ros.data.synth.lab import LAB_KINDS, bake_lab
    tex = {k: bake_lab([0, i], 96, 128, kind=k).colour.astype(float) for i, k in enumerate(LAB_KINDS)}
    assert tex['cavity'].mean() < 40 < tex['pad'].mean()
    ink = np.abs(np.diff(tex['pad'].mean(-1), axis=1))
    assert np.percentile(ink, 99) > 3 * np.percentile(np.abs(np.diff(tex['foam'].mean(-1), axis=1)), 50)
    gen = SceneGenerator(RIG, seed=5, background='lab', num_instruments=0, effects=0.0, canvas='full',
                         episode_length=1)
    tissue = SceneGenerator(RIG, seed=5, background='tissue', num_instruments=0, effects=0.0, canvas='full',
                            episode_length=1)
    red = lambda img: img[..., 0].mean() - img[..., 1:].mean()  # tissue is red above all
    lab_red = [red(gen.frame(i).left.astype(float)) for i in range(6)]
    tissue_red = [red(tissue.frame(i).left.astype(float)) for i in range(6)]
    assert min(tissue_red) > 25 and sum(r < 25 for r in lab_red) >= 3
    with pytest.raises(DataError, match='background'):
        SceneGenerator(RIG, background='moon')


def test_camera_effects_fog_motion_exposure_white_balance():
    from mffseg_ros.data.synth.effects import Effects, apply_effects, specular_band
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    noise = np.zeros((96, 128, 3), np.float32)
    run = lambda **kw: apply_effects(img.copy(), Effects(**kw), rng=rng, smoke=None, smoke_shift=0,
                                     vignette=None, noise_tile=noise).astype(float)
    plain = run()
    assert run(fog=0.5).std() < 0.7 * plain.std()
    moved = run(motion=(60.0, 0.0))  # 9 px at 96 wide, horizontal: smears along x, not along y
    dx = lambda a: np.abs(np.diff(a, axis=1)).mean()
    dy = lambda a: np.abs(np.diff(a, axis=0)).mean()
    assert dx(moved) < 0.5 * dx(plain) and dx(moved) / dy(moved) < 0.6 * dx(plain) / dy(plain)
    assert run(exposure=0.6).mean() < 0.75 * plain.mean()
    warm = run(gains=(1.2, 1.0, 0.8))
    assert warm[..., 0].mean() - warm[..., 2].mean() > plain[..., 0].mean() - plain[..., 2].mean() + 20
    grey = np.full((64, 96, 3), 100, np.uint8)
    specular_band(grey, Effects(band=0.8, band_params=(1.0, 0.0, 0.05)))  # bottom band
    assert grey[-8:].mean() > 150 and grey[20:40].mean() < 110


def test_some_episodes_have_touching_tools():
    gen = SceneGenerator(RIG, seed=8, num_instruments=(2, 2), episode_length=1)
    gaps = [np.linalg.norm(gen.episode(e).instruments[0].centre - gen.episode(e).instruments[1].centre)
            for e in range(40)]
    close = sum(g < 0.01 for g in gaps)
    assert 4 <= close <= 24  # about 30 %: jaws meet in some episodes, not in most
