import math

import cv2
import numpy as np
import pytest

from mffseg_ros.errors import DataError
from mffseg_ros.inference.instruments import Instrument
from mffseg_ros.inference.perception import InstrumentPerception, PerceptionConfig
from mffseg_ros.inference.results import SegmentationResult
from mffseg_ros.inference.shaft_taper import ShaftTaper, measure_taper
from mffseg_ros.inference.stereo import (
    StereoCalibration,
    epipolar_distance,
    fundamental_from_projections,
    match_instruments,
    projection_from_camera_info,
    triangulate,
)
from mffseg_ros.inference.tip_disparity import tip_disparity

W, H = 1280, 1024
F_PX, BASELINE = 1050.0, 0.0044  # a da Vinci endoscope: ~1050 px focal length, 4.4 mm baseline


def rectified_rig():
    """camera_info P's of a rectified pair, as stereo_image_proc / camera_calibration write them."""
    left = [F_PX, 0, 640.0, 0, 0, F_PX, 512.0, 0, 0, 0, 1, 0]
    right = list(left)
    right[3] = -F_PX * BASELINE
    return projection_from_camera_info(left), projection_from_camera_info(right)


def verged_rig():
    """A raw (unrectified) pair: different intrinsics, 2 degrees toe-in, a small vertical offset."""
    K_left = np.array([[1051.7, 0, 585.1], [0, 1051.5, 535.5], [0, 0, 1]])
    K_right = np.array([[1051.3, 0, 682.7], [0, 1051.1, 535.9], [0, 0, 1]])
    R, _ = cv2.Rodrigues(np.array([0.004, -math.radians(2.0), 0.001]))
    t = np.array([-0.00436, 0.0003, -0.0002])
    return K_left @ np.hstack([np.eye(3), np.zeros((3, 1))]), K_right @ np.hstack([R, t[:, None]])


RIGS = {'rectified': rectified_rig, 'verged': verged_rig}


def project(P, xyz):
    x = np.column_stack([xyz, np.ones(len(xyz))]) @ P.T
    return x[:, :2] / x[:, 2:]


def points_in_view(n, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.03, 0.15, n)  # 3..15 cm in front of the endoscope
    return np.column_stack([rng.uniform(-0.25, 0.25, n) * z, rng.uniform(-0.2, 0.2, n) * z, z])


@pytest.mark.parametrize('rig', RIGS)
def test_triangulation_recovers_known_points(rig):
    P1, P2 = RIGS[rig]()
    xyz = points_in_view(200)
    np.testing.assert_allclose(triangulate(P1, P2, project(P1, xyz), project(P2, xyz)), xyz, atol=1e-9)


def test_triangulation_error_with_pixel_noise_matches_stereo_geometry():
    P1, P2 = rectified_rig()
    xyz = points_in_view(500, seed=1)
    rng = np.random.default_rng(2)
    noisy = [project(P, xyz) + rng.normal(0, 0.3, (len(xyz), 2)) for P in (P1, P2)]
    depth_error = np.abs(triangulate(P1, P2, *noisy)[:, 2] - xyz[:, 2])
    # dz = z^2 / (f b) * d(disparity); disparity noise sigma = 0.3 * sqrt(2) px
    expected_sigma = xyz[:, 2] ** 2 / (F_PX * BASELINE) * 0.3 * math.sqrt(2)
    ratio = np.sqrt(np.mean((depth_error / expected_sigma) ** 2))
    assert 0.8 < ratio < 1.25


@pytest.mark.parametrize('rig', RIGS)
def test_fundamental_matrix_satisfies_the_epipolar_constraint(rig):
    P1, P2 = RIGS[rig]()
    F = fundamental_from_projections(P1, P2)
    xyz = points_in_view(100, seed=3)
    assert epipolar_distance(F, project(P1, xyz), project(P2, xyz)).max() < 1e-6
    moved = project(P2, xyz) + [0.0, 4.0]  # 4 px down: off the epipolar line
    assert epipolar_distance(F, project(P1, xyz), moved).min() > (3.9 if rig == 'rectified' else 3.0)


def test_rectified_epipolar_distance_is_the_row_difference():
    F = fundamental_from_projections(*rectified_rig())
    d = epipolar_distance(F, [[100, 200], [900, 700]], [[40, 203.5], [850, 690]])
    np.testing.assert_allclose(d, [3.5, 10.0], atol=1e-9)


@pytest.mark.parametrize('bad, problem', [
    ([1.0] * 9, '12 numbers'),
    ([0.0] * 12, 'not calibrated'),
    ([F_PX, 0, 640, 0, 0, F_PX, 512, 0, 0, 0, math.nan, 0], 'non-finite'),
])
def test_unusable_camera_info_raises_data_error(bad, problem):
    with pytest.raises(DataError, match=problem):
        projection_from_camera_info(bad)


def test_a_pair_without_baseline_is_refused():
    P1, _ = rectified_rig()
    with pytest.raises(DataError, match='baseline'):
        StereoCalibration(P1, P1.ravel().tolist())


def _instrument(index, uv, area=500.0):
    uv = (float(uv[0]), float(uv[1]))
    return Instrument(index, area, 1.0, None, uv, 'claspers', (uv[0] - 40.0, uv[1] + 30.0), (0.8, -0.6))


def test_matching_without_types_by_epipolar_line_disparity_and_area():
    P1, P2 = rectified_rig()
    calib = StereoCalibration(P1, P2)
    xyz = np.array([[0.01, 0.0, 0.06], [-0.01, 0.002, 0.08], [0.0, 0.004, 0.05], [0.005, -0.01, 0.07]])
    uv1, uv2 = project(P1, xyz), project(P2, xyz)
    left = [_instrument(1, uv1[0]), _instrument(2, uv1[1]), _instrument(3, uv1[2]), _instrument(4, uv1[3]),
            _instrument(5, (300, 300))]
    right = [_instrument(1, uv2[2]), _instrument(2, uv2[1]), _instrument(3, uv2[0]),
             _instrument(4, uv2[3] + [0, 25]),  # 25 px off its epipolar line: no match
             _instrument(5, (320, 300))]  # right of the left tip: negative disparity, behind the cameras
    matches = match_instruments(left, right, calib)
    assert [(m.left, m.right) for m in matches] == [(0, 2), (1, 1), (2, 0)]
    for m in matches:
        np.testing.assert_allclose(m.tip_xyz, xyz[m.left], atol=1e-9)
    assert [(m.left, m.right) for m in match_instruments(left, right, calib, max_epipolar_px=30)][-1] == (3, 3)
    near = match_instruments(left, right, calib, max_depth=0.055)  # only the 5 cm tool is close enough
    assert [(m.left, m.right) for m in near] == [(2, 0)]


def test_area_mismatches_are_not_matched():
    P1, P2 = rectified_rig()
    xyz = np.array([[0.0, 0.0, 0.06]])
    uv1, uv2 = project(P1, xyz)[0], project(P2, xyz)[0]
    calib = StereoCalibration(P1, P2)
    assert match_instruments([_instrument(1, uv1, area=500)], [_instrument(1, uv2, area=2000)], calib) == []
    assert len(match_instruments([_instrument(1, uv1, area=500)], [_instrument(1, uv2, area=600)], calib)) == 1


# Instruments as 3-D points: (type id, jaw centre, a point on the shaft far behind it).
TOOLS = [(3, (0.008, 0.004, 0.06), (0.06, 0.05, 0.10)),
         (6, (-0.010, 0.002, 0.075), (-0.08, -0.04, 0.12)),
         (1, (0.001, -0.008, 0.05), (0.01, -0.09, 0.09))]


def render(P, tools):
    """Type and parts label maps of one view: a thick shaft, a wrist and a jaw disc per tool."""
    types, parts = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    for type_id, tip, shaft in tools:
        (tu, tv), (su, sv) = project(P, np.array([tip, shaft]))
        depth = tip[2]
        centre, back = (round(tu * 16), round(tv * 16)), (round(su * 16), round(sv * 16))  # 1/16 px

        for part, radius_m, shape in ((1, 0.004, 'line'), (2, 0.004, 'disc'), (3, 0.002, 'disc')):
            radius = round(radius_m * F_PX / depth * 16)  # 8 mm shaft, wrist and jaw discs
            for image, value in ((types, type_id), (parts, part)):
                if shape == 'line':
                    cv2.line(image, back, centre, value, max(1, radius // 8), cv2.LINE_8, 4)
                else:
                    cv2.circle(image, centre, radius, value, -1, cv2.LINE_8, 4)
    return types, parts


@pytest.mark.parametrize('rig', RIGS)
def test_tips_from_label_maps_triangulate_within_a_fifth_of_a_millimetre(rig):
    P1, P2 = RIGS[rig]()
    left = SegmentationResult.from_labels(*render(P1, TOOLS)[::-1])
    right = SegmentationResult.from_labels(*render(P2, TOOLS[:2])[::-1])  # the third tool is hidden on the right
    frame = InstrumentPerception(PerceptionConfig(max_depth=0.2)).process(left, right, StereoCalibration(P1, P2))
    got = {i.type_id: i for i in frame.instruments}
    assert sorted(got) == [1, 3, 6] and all(i.source == 'claspers' for i in frame.instruments)
    for type_id, tip, shaft in TOOLS[:2]:
        assert np.linalg.norm(np.array(got[type_id].xyz) - np.array(tip)) < 0.0002, got[type_id]
        axis = (np.array(tip) - np.array(shaft)) / np.linalg.norm(np.array(tip) - np.array(shaft))
        assert np.degrees(np.arccos(np.clip(axis @ got[type_id].axis_xyz, -1, 1))) < 3.0
    assert all(math.isnan(c) for c in got[1].xyz)


def _pixels(mask):
    ys, xs = np.nonzero(mask)
    return np.column_stack([xs, ys]).astype(np.float64)


def _cylinder_mask(P, start, end, diameter, shape):
    """Image mask of a cylinder of `diameter` (m) from 3-D `start` to `end`: its silhouette drawn as
    discs of the projected width at many points along it (width = f * diameter / depth)."""
    mask = np.zeros(shape, np.uint8)
    for s in np.linspace(0.0, 1.0, 400):
        xyz = np.asarray(start) + s * (np.asarray(end) - np.asarray(start))
        u, v = project(P, xyz[None])[0]
        radius = 0.5 * P[0, 0] * diameter / xyz[2]
        cv2.circle(mask, (int(round(u * 16)), int(round(v * 16))), int(round(radius * 16)), 1, -1, cv2.LINE_8, 4)
    return mask.astype(bool)


def test_the_taper_of_a_receding_shaft_gives_its_depth_change():
    P1, _ = rectified_rig()
    tip_end, back = np.array([0.0, 0.0, 0.05]), np.array([-0.06, 0.0, 0.10])  # along the baseline, 40 deg deep
    mask = _cylinder_mask(P1, tip_end, back, 0.008, (H, W))
    near, far, ratio = measure_taper(_pixels(mask), (H, W), np.array([1.0, 0.0]))
    # The ray through column u has x = z (u - cx) / f; the shaft's points have x = -1.2 (z - 0.05).
    depth = {name: 0.06 / (1.2 + (u - 640.0) / F_PX) for name, (u, _) in (('near', near), ('far', far))}
    assert ratio == pytest.approx(depth['far'] / depth['near'], rel=0.03)
    assert measure_taper(_pixels(mask[:, :700]), (H, 700), np.array([1.0, 0.0])) is not None
    strip = _pixels(mask[500:520])  # the shaft seen through an image 20 px high: the border cuts every slab
    assert measure_taper(strip, (20, W), np.array([1.0, 0.0])) is None


def test_a_shaft_along_the_baseline_gets_its_3d_axis_from_the_taper():
    """Stereo cannot match points along a shaft that lies on its own epipolar lines; its taper and the
    tip's depth give the axis (an image-plane axis would be 40 degrees off here)."""
    P1, P2 = rectified_rig()
    calib = StereoCalibration(P1, P2)
    tip, back = np.array([0.0, 0.0, 0.05]), np.array([-0.06, 0.0, 0.10])
    truth = (tip - back) / np.linalg.norm(tip - back)
    found = {}
    for side, P in (('left', P1), ('right', P2)):
        mask = _cylinder_mask(P, tip, back, 0.008, (H, W))
        ys, xs = np.nonzero(mask)
        near, far, ratio = measure_taper(_pixels(mask), (H, W), np.array([1.0, 0.0]))
        u_tip, v_tip = project(P, tip[None])[0]
        found[side] = Instrument(1, float(len(xs)), 1.0, None, (u_tip, v_tip), 'shaft_end',
                                 (float(xs.mean()), float(ys.mean())), (1.0, 0.0), ShaftTaper(near, far, ratio))
    (m,) = match_instruments([found['left']], [found['right']], calib)
    assert not m.axis_from_stereo
    assert math.degrees(math.acos(np.clip(np.dot(m.axis_xyz, truth), -1, 1))) < 5.0
    no_taper = [Instrument(**{**found['left'].__dict__, 'shaft_taper': None})]
    (m,) = match_instruments(no_taper, [found['right']], calib)
    assert math.degrees(math.acos(np.clip(np.dot(m.axis_xyz, truth), -1, 1))) > 30.0


def textured(shape, seed, blur=2.0):
    """Smooth random colour texture (uint8): what block matching needs to find a place again."""
    noise = np.random.default_rng(seed).uniform(0, 255, (*shape, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), blur)
    return np.clip((smooth - smooth.mean()) / smooth.std() * 40 + 128, 0, 255).astype(np.uint8)


def tool_in_front_of_tissue(disparity, tissue_disparity, size=(240, 320), fine=4):
    """(left, right, network instance map at half resolution, tip): a textured tool (instance 1) over
    textured tissue, the tool at `disparity` and the tissue behind it at `tissue_disparity` (px, in
    steps of 1/fine). Drawn `fine` times larger, moved by whole pixels there and shrunk, as a camera
    would image it (pixels on the tool's edge are a mix of tool and tissue in both eyes)."""
    h, w = size[0] * fine, size[1] * fine
    tool_mask = np.zeros((h, w), np.uint8)
    cv2.line(tool_mask, (0, 40 * fine), (170 * fine, 120 * fine), 1, 14 * fine)
    cv2.circle(tool_mask, (172 * fine, 121 * fine), 11 * fine, 1, -1)
    tool, tissue = textured((h, w), 1, blur=2.0 * fine), textured((h, w), 2, blur=3.0 * fine)

    def eye(shift, tissue_shift):  # the scene moved left by `shift` px (of the final image)
        move = lambda img, d: np.roll(img, -round(d * fine), axis=1)  # noqa: E731
        scene = np.where(move(tool_mask, shift)[..., None] > 0, move(tool, shift), move(tissue, tissue_shift))
        return cv2.resize(scene, (size[1], size[0]), interpolation=cv2.INTER_AREA)

    net = cv2.resize(tool_mask.astype(np.float32), (size[1] // 2, size[0] // 2), interpolation=cv2.INTER_AREA)
    return eye(0, 0), eye(disparity, tissue_disparity), (net > 0.5).astype(np.uint16), (178.0, 124.0)


@pytest.mark.parametrize('disparity', [20.0, 23.5, 31.75])
def test_tip_disparity_is_found_to_a_fraction_of_a_pixel_on_the_images(disparity):
    """The tips' disparity 3 px off, the tissue behind the tip 8 px further: block matching on the tool's
    own pixels (its mask at half the image's resolution, as the network gives it) finds the tool's
    disparity to a twentieth of a pixel; the whole window, tissue included, would be pulled off."""
    left, right, net, tip = tool_in_front_of_tissue(disparity, disparity - 8)
    assert tip_disparity(left, right, net, 1, tip, disparity + 3) == pytest.approx(disparity, abs=0.05)
    assert tip_disparity(left, right, net, 1, tip, disparity - 3) == pytest.approx(disparity, abs=0.05)
    whole_window = tip_disparity(left, right, np.ones_like(net), 1, tip, disparity + 3)
    assert abs(whole_window - disparity) > 0.15


def test_tip_disparity_declines_what_the_images_cannot_tell():
    left, right, net, tip = tool_in_front_of_tissue(20.0, 12.0)
    flat = np.full_like(left, 90)
    assert tip_disparity(flat, flat, net, 1, tip, 20.0) is None  # no texture
    assert tip_disparity(left, right, net, 1, tip, 40.0) is None  # the true disparity is beyond the search
    assert tip_disparity(left, right, net, 2, tip, 20.0) is None  # no pixels of that instrument there
    assert tip_disparity(left, textured(left.shape[:2], 9), net, 1, tip, 20.0) is None  # another scene
    assert tip_disparity(left, right, net, 1, (5000.0, 5000.0), 20.0) is None  # a tip off the image
