"""What the node computes for tips, checked on exact label maps (no network): 2-D tips against known
positions, 3-D tips against known points projected into a synthetic stereo pair, and the tips cloud
as a numpy-only consumer reads it. The node's DDS plumbing is checked in test_node.py."""
import cv2
import numpy as np
import pytest
from std_msgs.msg import Header

from mffseg_ros.model.classes import PART_CLASPERS, PART_SHAFT, PART_WRIST
from mffseg_ros.ros import conversions, pipeline

H, W = 192, 256
F, BASELINE = 250.0, 0.005  # px, m: a 5 mm stereo endoscope
K = np.array([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1]])
P_LEFT = np.hstack([K, np.zeros((3, 1))])
P_RIGHT = np.hstack([K, K @ np.array([[-BASELINE], [0], [0]])])
SHIFT = 4  # cv2 fixed-point bits: draw at sub-pixel positions


def project(P, xyz):
    p = P @ np.append(xyz, 1.0)
    return p[:2] / p[2]


def _pt(uv):
    return tuple(round(c * (1 << SHIFT)) for c in uv)


def draw_instrument(type_map, parts_map, type_id, tip_uv, toward_uv, parts=('shaft', 'wrist', 'claspers')):
    """A shaft from `toward_uv` (at the border) to the wrist, a wrist disk and a clasper disk centred
    exactly on `tip_uv` (drawn last, so its centroid is the tip)."""
    tip_uv, toward_uv = np.asarray(tip_uv, float), np.asarray(toward_uv, float)
    direction = (toward_uv - tip_uv) / np.linalg.norm(toward_uv - tip_uv)
    wrist_uv = tip_uv + 9 * direction
    layers = {
        'shaft': (PART_SHAFT, lambda img, v: cv2.line(img, _pt(wrist_uv), _pt(toward_uv), v, 9, cv2.LINE_8, SHIFT)),
        'wrist': (PART_WRIST, lambda img, v: cv2.circle(img, _pt(wrist_uv), 5 << SHIFT, v, -1, cv2.LINE_8, SHIFT)),
        'claspers': (PART_CLASPERS, lambda img, v: cv2.circle(img, _pt(tip_uv), 4 << SHIFT, v, -1, cv2.LINE_8, SHIFT)),
    }
    for name in ('shaft', 'wrist', 'claspers'):
        if name in parts:
            part_id, draw = layers[name]
            draw(type_map, int(type_id))
            draw(parts_map, int(part_id))


def blank():
    return np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)


def mask_centroid(mask):
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean()


def test_tips_are_the_clasper_centroids():
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 3, (80.3, 70.6), (0, 20))
    draw_instrument(type_map, parts_map, 6, (170.2, 120.4), (W - 1, H - 1))
    tips = pipeline.frame_tips(pipeline.LabelMaps(type_map, parts_map), min_area=30)
    assert [t.type_id for t in tips] == [3, 6] and all(t.source == 'claspers' for t in tips)
    for tip, type_id in zip(tips, (3, 6)):
        expected = mask_centroid((type_map == type_id) & (parts_map == PART_CLASPERS))
        assert tip.u == pytest.approx(expected[0], abs=1e-3) and tip.v == pytest.approx(expected[1], abs=1e-3)
    assert tips[0].u == pytest.approx(80.3, abs=0.5) and tips[0].v == pytest.approx(70.6, abs=0.5)
    assert all(np.isnan(t.xyz).all() for t in tips)  # mono: no 3-D


def test_without_claspers_the_wrist_then_the_shaft_end_gives_the_tip():
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 1, (60, 60), (0, 0), parts=('shaft', 'wrist'))
    draw_instrument(type_map, parts_map, 2, (200, 100), (W - 1, 0), parts=('shaft',))
    tips = {t.type_id: t for t in pipeline.frame_tips(pipeline.LabelMaps(type_map, parts_map), min_area=30)}
    assert tips[1].source == 'wrist'
    assert (tips[1].u, tips[1].v) == pytest.approx(mask_centroid(parts_map == PART_WRIST), abs=1e-3)
    assert tips[2].source == 'shaft_end'
    # the shaft runs from the top-right corner to where the wrist would be: that free end is the tip
    direction = np.array([W - 1 - 200, 0 - 100]) / np.hypot(W - 1 - 200, 100)
    shaft_end = np.array([200, 100]) + 9 * direction
    assert np.hypot(tips[2].u - shaft_end[0], tips[2].v - shaft_end[1]) < 3


def test_small_blobs_are_not_instruments():
    type_map, parts_map = blank()
    cv2.circle(type_map, (50, 50), 2, 4, -1)
    assert pipeline.frame_tips(pipeline.LabelMaps(type_map, parts_map), min_area=30) == []


def stereo_scene(points):
    """Label maps of both cameras for instruments whose tips are at the 3-D `points`."""
    maps = {}
    for side, P in (('left', P_LEFT), ('right', P_RIGHT)):
        type_map, parts_map = blank()
        for type_id, xyz, border in points:
            draw_instrument(type_map, parts_map, type_id, project(P, xyz), border)
        maps[side] = pipeline.LabelMaps(type_map, parts_map)
    return maps


def test_3d_tips_from_projected_stereo_are_within_tolerance():
    truth = [(3, np.array([-0.012, -0.004, 0.07]), (0, 0)),
             (5, np.array([0.010, 0.006, 0.09]), (W - 1, H - 1))]
    maps = stereo_scene(truth)
    tips = pipeline.frame_tips(maps['left'], 30, maps['right'], P_LEFT, P_RIGHT)
    assert [t.type_id for t in tips] == [3, 5]
    for tip, (_, xyz, _) in zip(tips, truth):
        # a 0.2 px disparity error at 70-90 mm depth is ~1 mm: tolerance 2 mm
        assert np.linalg.norm(np.asarray(tip.xyz) - xyz) < 0.002, (tip.xyz, xyz)


def test_a_tip_without_a_partner_in_the_right_image_has_no_3d():
    left = stereo_scene([(3, np.array([0.0, 0.0, 0.08]), (0, 0))])['left']
    right = stereo_scene([(6, np.array([0.0, 0.0, 0.08]), (0, 0))])['right']  # another type
    tips = pipeline.frame_tips(left, 30, right, P_LEFT, P_RIGHT)
    assert len(tips) == 1 and np.isnan(tips[0].xyz).all()


def test_tips_cloud_reads_back_with_numpy_only():
    maps = stereo_scene([(2, np.array([0.003, 0.002, 0.06]), (0, H - 1))])
    tips = pipeline.frame_tips(maps['left'], 30, maps['right'], P_LEFT, P_RIGHT)
    header = Header(frame_id='left_optical')
    cloud = conversions.tips_cloud(tips, header)
    points = np.frombuffer(bytes(cloud.data), dtype=conversions.TIP_DTYPE, count=cloud.width)
    assert cloud.width == 1 and cloud.point_step == conversions.TIP_DTYPE.itemsize
    assert points['type_id'][0] == 2 and points['source'][0] == PART_CLASPERS
    assert points['u'][0] == pytest.approx(tips[0].u, abs=1e-4)
    np.testing.assert_allclose([points['x'][0], points['y'][0], points['z'][0]], tips[0].xyz, atol=1e-6)
    markers = conversions.tip_markers(tips, header)
    assert len(markers.markers) == 3  # DELETEALL, sphere, label
    assert markers.markers[1].pose.position.z == pytest.approx(tips[0].xyz[2])


def test_present_types_and_masks():
    type_map, _ = blank()
    type_map[10:20, 10:20] = 4
    type_map[30:40, 30:40] = 7
    type_map[0, 0] = 255  # ignore value is not a type
    assert pipeline.present_types(type_map, 8) == [4, 7]
    mask = pipeline.type_mask(type_map, 4)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255} and (mask == 255).sum() == 100


def raw_stereo_rig():
    """A calibrated but UNrectified rig, as in an EndoVis bag or a dVRK image_raw + camera_info:
    distortion, principal points that differ, a small rotation between the eyes. Returns
    (camera_info dicts, R and T of the right camera)."""
    K1 = np.array([[F, 0, W / 2 - 6], [0, F, H / 2 + 3], [0, 0, 1]])
    K2 = np.array([[F * 1.01, 0, W / 2 + 7], [0, F * 1.01, H / 2 - 4], [0, 0, 1]])
    D1, D2 = np.array([-0.2, 0.05, 0.001, -0.001, 0.0]), np.array([-0.18, 0.04, -0.001, 0.001, 0.0])
    R = cv2.Rodrigues(np.array([0.01, -0.02, 0.005]))[0]
    T = np.array([-BASELINE, 0.0002, 0.0001])
    R1, R2, P1, P2 = cv2.stereoRectify(K1, D1, K2, D2, (W, H), R, T.reshape(3, 1),
                                       flags=cv2.CALIB_ZERO_DISPARITY, alpha=0)[:4]
    infos = {'left': dict(k=K1, d=D1, r=R1, p=P1), 'right': dict(k=K2, d=D2, r=R2, p=P2)}
    return infos, R, T


def test_3d_tips_of_raw_images_are_rectified_before_triangulation():
    """image_raw + camera_info: tip pixels are undistorted and rectified (K, D, R) before they are
    triangulated with the rectified P's; u v stay raw pixels."""
    from mffseg_ros.inference.stereo import pixel_rectifier
    infos, R, T = raw_stereo_rig()
    truth = [(3, np.array([-0.012, -0.004, 0.07]), (0, 0)), (5, np.array([0.010, 0.006, 0.09]), (W - 1, H - 1))]
    maps, raw_uv = {}, {}
    for side, (rvec, tvec) in (('left', (np.zeros(3), np.zeros(3))), ('right', (cv2.Rodrigues(R)[0], T))):
        type_map, parts_map = blank()
        for type_id, xyz, border in truth:
            uv = cv2.projectPoints(xyz.reshape(1, 3), rvec, tvec, infos[side]['k'], infos[side]['d'])[0].ravel()
            raw_uv[side, type_id] = uv
            draw_instrument(type_map, parts_map, type_id, uv, border)
        maps[side] = pipeline.LabelMaps(type_map, parts_map)
    rectifiers = [pixel_rectifier(*(infos[side][key] for key in 'kdrp')) for side in ('left', 'right')]
    assert all(r is not None for r in rectifiers)
    tips = pipeline.frame_tips(maps['left'], 30, maps['right'], infos['left']['p'], infos['right']['p'], *rectifiers)
    unrectified = pipeline.frame_tips(maps['left'], 30, maps['right'], infos['left']['p'], infos['right']['p'])
    assert [t.type_id for t in tips] == [3, 5]
    for tip, raw, (type_id, xyz, _) in zip(tips, unrectified, truth):
        expected = infos['left']['r'] @ xyz  # the rectified left optical frame
        assert np.linalg.norm(np.asarray(tip.xyz) - expected) < 0.002, (tip.xyz, expected)
        assert np.hypot(tip.u - raw_uv['left', type_id][0], tip.v - raw_uv['left', type_id][1]) < 0.5
        assert (tip.u, tip.v) == (raw.u, raw.v)
        assert not np.linalg.norm(np.asarray(raw.xyz) - expected) < 0.002  # raw pixels: wrong (or no) 3-D


def test_rectified_camera_info_needs_no_pixel_rectifier():
    assert pixel_rectifier_of(K, np.zeros(5), np.eye(3), P_LEFT) is None
    assert pixel_rectifier_of(K, [], np.zeros(9), P_RIGHT) is None  # unset R: none
    assert pixel_rectifier_of(np.zeros(9), [0.1, 0, 0, 0, 0], np.eye(3), P_LEFT) is None  # no K given


def pixel_rectifier_of(k, d, r, p):
    from mffseg_ros.inference.stereo import pixel_rectifier
    return pixel_rectifier(k, d, r, p)
