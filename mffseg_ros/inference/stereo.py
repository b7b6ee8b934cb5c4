"""Stereo: match left and right instruments (no types needed) by the epipolar constraint, a disparity range
and mask overlap; triangulate their tips and shaft axes.

Projection matrices are 3x4 (sensor_msgs/CameraInfo.p). 3-D points come out in the frame both P's
project from, in the units of their translation: for ROS camera_infos that is the left (rectified)
camera's optical frame in metres, since P_right = [fx 0 cx Tx; 0 fy cy 0; 0 0 1 0] with Tx = -fx * baseline.
"""
import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from mffseg_ros.errors import DataError

DEFAULT_MAX_EPIPOLAR_PX = 10.0  # tip centroids of one instrument in two views: segmentation and distortion
DEFAULT_MAX_AREA_RATIO = 3.0  # one instrument seen by two cameras 4 mm apart has a similar area
_TIP_REACH = 0.04  # the part of a mask slid along the rows to match it: this far around its tip (of the width)
_INFEASIBLE = 1e6


def projection_from_camera_info(p):
    """CameraInfo.p (12 numbers, row-major) or a 3x4 array -> 3x4 float64; DataError when unusable."""
    try:
        P = np.asarray(p, dtype=np.float64).reshape(3, 4)
    except (TypeError, ValueError):
        size = np.size(p) if np.ndim(p) else 'a scalar'
        raise DataError(f'camera_info P must have 12 numbers (3x4), got {size}') from None
    if not np.all(np.isfinite(P)):
        raise DataError(f'camera_info P has non-finite values: {P.ravel().tolist()}')
    if abs(np.linalg.det(P[:, :3])) < 1e-12:
        raise DataError(f'camera_info P is not a projection (left 3x3 singular; all zeros means the camera is '
                        f'not calibrated): {P.ravel().tolist()}')
    return P


def pixel_rectifier(K, D, R, P, distortion_model='plumb_bob'):
    """A function mapping raw pixels (Nx2) of a camera to the rectified image that `P` projects into,
    or None when the image is already rectified (no distortion, R = I, K = P[:, :3]) or K is missing.

    A ROS camera_info's P is the projection of the RECTIFIED camera; `image_raw` pixels must be
    undistorted and rotated by R before they are triangulated with the P's (camera_info convention)."""
    K = np.asarray(K, np.float64).reshape(3, 3)
    P = projection_from_camera_info(P)
    if not np.all(np.isfinite(K)) or abs(np.linalg.det(K)) < 1e-12:
        return None  # no intrinsics given: take the pixels as rectified
    D = np.asarray(D if D is not None else (), np.float64).ravel()
    R = np.asarray(R, np.float64).reshape(3, 3) if np.size(R) == 9 else np.eye(3)
    if not np.any(R):
        R = np.eye(3)  # an unset rotation (all zeros) means none
    if (not np.any(D) and np.allclose(R, np.eye(3), atol=1e-9)
            and np.allclose(K, P[:, :3], rtol=0, atol=1e-6 * max(1.0, np.abs(K).max()))):
        return None
    import cv2
    model = (distortion_model or 'plumb_bob').lower()
    if model == 'equidistant':
        D4 = np.zeros(4)
        D4[:min(4, D.size)] = D[:4]

        def rectify(uv):
            uv = np.asarray(uv, np.float64).reshape(-1, 1, 2)
            return cv2.fisheye.undistortPoints(uv, K, D4, R=R, P=P).reshape(-1, 2)
        return rectify
    if model not in ('plumb_bob', 'rational_polynomial'):
        raise DataError(f'camera_info distortion_model {distortion_model!r} is not supported '
                        '(plumb_bob, rational_polynomial, equidistant)')
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-9)

    def rectify(uv):
        uv = np.asarray(uv, np.float64).reshape(-1, 1, 2)
        if hasattr(cv2, 'undistortPointsIter'):  # OpenCV 4; OpenCV 5 folded it into undistortPoints
            return cv2.undistortPointsIter(uv, K, D, R, P, criteria).reshape(-1, 2)
        return cv2.undistortPoints(uv, K, D, R=R, P=P, criteria=criteria).reshape(-1, 2)
    return rectify


def camera_centre(P):
    """Centre of projection of P (3-vector): P @ [C, 1] = 0."""
    P = projection_from_camera_info(P)
    return -np.linalg.solve(P[:, :3], P[:, 3])


def fundamental_from_projections(P1, P2):
    """F with x2^T F x1 = 0 for x1 = P1 X, x2 = P2 X; scaled to unit Frobenius norm."""
    P1, P2 = projection_from_camera_info(P1), projection_from_camera_info(P2)
    c1 = np.append(camera_centre(P1), 1.0)
    baseline = np.linalg.norm(camera_centre(P2) - c1[:3])
    if baseline < 1e-12 * max(1.0, np.linalg.norm(c1[:3])):
        raise DataError('the two projection matrices share one camera centre: no baseline, no 3-D. A stereo '
                        'camera_info pair needs the baseline in the right P (P[0][3] = -fx * baseline)')
    e2 = P2 @ c1  # the epipole in image 2
    e2_cross = np.array([[0, -e2[2], e2[1]], [e2[2], 0, -e2[0]], [-e2[1], e2[0], 0]])
    F = e2_cross @ P2 @ np.linalg.pinv(P1)
    return F / np.linalg.norm(F)


def epipolar_distance(F, uv1, uv2):
    """Symmetric point-to-epipolar-line distance in pixels for each pair (Nx2, Nx2) -> N.
    For a rectified rig this is |v1 - v2|."""
    x1 = np.column_stack([np.reshape(uv1, (-1, 2)), np.ones(len(np.reshape(uv1, (-1, 2))))])
    x2 = np.column_stack([np.reshape(uv2, (-1, 2)), np.ones(len(np.reshape(uv2, (-1, 2))))])
    line2 = x1 @ F.T  # epipolar lines in image 2
    line1 = x2 @ F  # epipolar lines in image 1
    residual = np.abs(np.sum(x2 * line2, axis=1))
    return 0.5 * (residual / np.hypot(line2[:, 0], line2[:, 1]) + residual / np.hypot(line1[:, 0], line1[:, 1]))


def triangulate(P_left, P_right, uv_left, uv_right):
    """Linear (DLT) triangulation of N pixel pairs (Nx2 each) -> Nx3; NaN for points at infinity."""
    P1, P2 = projection_from_camera_info(P_left), projection_from_camera_info(P_right)
    uv1 = np.asarray(uv_left, np.float64).reshape(-1, 2)
    uv2 = np.asarray(uv_right, np.float64).reshape(-1, 2)
    if len(uv1) != len(uv2):
        raise ValueError(f'{len(uv1)} left points but {len(uv2)} right points')
    rows = np.stack([uv1[:, :1] * P1[2] - P1[0], uv1[:, 1:] * P1[2] - P1[1],
                     uv2[:, :1] * P2[2] - P2[0], uv2[:, 1:] * P2[2] - P2[1]], axis=1)  # N x 4 x 4
    rows /= np.linalg.norm(rows, axis=2, keepdims=True)  # equal weight per equation: better conditioning
    X = np.linalg.svd(rows)[2][:, -1, :]
    w = X[:, 3:]
    with np.errstate(divide='ignore', invalid='ignore'):
        xyz = np.where(np.abs(w) > 1e-12, X[:, :3] / w, np.nan)
    return xyz


def depth_in(P, xyz):
    """Depth of points (Nx3) along P's optical axis; negative behind the camera."""
    P = projection_from_camera_info(P)
    M = P[:, :3]
    homogeneous = np.column_stack([xyz, np.ones(len(xyz))])
    return np.sign(np.linalg.det(M)) * (homogeneous @ P[2]) / np.linalg.norm(M[2])


@dataclass
class StereoCalibration:
    """What 3-D needs from a camera_info pair: the rectified projections and, for raw images, the
    raw -> rectified pixel maps (pixel_rectifier; None when the images are rectified)."""
    P_left: np.ndarray
    P_right: np.ndarray
    rectify_left: object = None
    rectify_right: object = None

    def __post_init__(self):
        self.P_left = projection_from_camera_info(self.P_left)
        self.P_right = projection_from_camera_info(self.P_right)
        self.F = fundamental_from_projections(self.P_left, self.P_right)

    def rectified(self, side, uv):
        uv = np.asarray(uv, np.float64).reshape(-1, 2)
        rectify = self.rectify_left if side == 'left' else self.rectify_right
        return uv if rectify is None or not len(uv) else np.asarray(rectify(uv), np.float64).reshape(-1, 2)

    def disparity_range(self, min_depth, max_depth):
        """(lowest, highest) horizontal disparity u_left - u_right in rectified pixels of points at
        depths in [min_depth, max_depth] (m), or None when the rig is not a horizontal one."""
        P1, P2 = self.P_left, self.P_right
        if abs(P2[1, 3]) > 1e-9 * max(1.0, abs(P2[0, 3])) or abs(P1[0, 0]) < 1e-12:
            return None
        fx_baseline = P1[0, 3] * P2[0, 0] / P1[0, 0] - P2[0, 3]  # fx * baseline for ROS camera_infos
        offset = P1[0, 2] - P2[0, 2]
        return (fx_baseline / max_depth + offset, fx_baseline / max(min_depth, 1e-6) + offset)

    def backproject(self, uv, depth):
        """Rectified left pixel at `depth` (m) -> 3-D point in the left optical frame."""
        M, p4 = self.P_left[:, :3], self.P_left[:, 3]
        return np.linalg.solve(M, np.array([uv[0], uv[1], 1.0]) * depth - p4)


@dataclass
class StereoMatch:
    left: int  # index into the left instruments
    right: int  # index into the right instruments
    epipolar_px: float
    tip_xyz: tuple  # metres, left optical frame
    axis_xyz: tuple | None  # unit shaft axis pointing to the tip; None when not observable
    axis_from_stereo: bool  # False: the axis is the image-plane axis at the tip's depth
    tip_from_images: bool = False  # True: the tip's disparity was refined on the images (tip_disparity.py)


def _shifted_iou(mask_left, mask_right, shift):
    """IoU of a left mask with the right mask moved right by `shift` network pixels (the disparity)."""
    ys, xs = np.nonzero(mask_left)
    xs_r = np.round(xs - shift).astype(np.int64)
    ok = (xs_r >= 0) & (xs_r < mask_right.shape[1])
    inter = np.count_nonzero(mask_right[ys[ok], xs_r[ok]])
    return inter / max(1, len(xs) + np.count_nonzero(mask_right) - inter)


def _line_through(a, b):
    return np.cross([a[0], a[1], 1.0], [b[0], b[1], 1.0])


def _axis_3d(calib, tip_xyz, point_left, point_right, dir_right, taper=None, min_sin=0.12):
    """Unit 3-D shaft axis from a left axis point and the right image's axis line: the left point's
    epipolar line cuts the right axis line at its match: (axis, True). When the two lines are nearly
    parallel (a shaft along the baseline), from the left shaft's taper (`taper`: its two points
    rectified, and their width ratio) and the tip's depth, else in the image plane at the tip's depth:
    (axis, False)."""
    epiline = calib.F @ np.array([point_left[0], point_left[1], 1.0])
    right_line = _line_through(point_right, point_right + dir_right)
    cross = np.cross(epiline, right_line)
    n1, n2 = epiline[:2] / np.linalg.norm(epiline[:2]), right_line[:2] / np.linalg.norm(right_line[:2])
    sin = abs(n1[0] * n2[1] - n1[1] * n2[0])  # of the angle between the two lines
    tip = np.asarray(tip_xyz)
    if sin >= min_sin and abs(cross[2]) > 1e-12:
        match = cross[:2] / cross[2]
        second = triangulate(calib.P_left, calib.P_right, [point_left], [match])[0]
        if np.all(np.isfinite(second)) and depth_in(calib.P_left, second[None])[0] > 0:
            axis = tip - second
            norm = np.linalg.norm(axis)
            if norm > 1e-6:
                return tuple(axis / norm), True
    depth = depth_in(calib.P_left, tip[None])[0]
    if taper is not None:  # the shaft's width is inversely proportional to its depth
        near, far, width_ratio = taper
        axis = calib.backproject(near, depth) - calib.backproject(far, depth * width_ratio)
        norm = np.linalg.norm(axis)
        if norm > 1e-9:
            return tuple(axis / norm), False
    second = calib.backproject(point_left, depth)
    axis = tip - second
    norm = np.linalg.norm(axis)
    return (tuple(axis / norm), False) if norm > 1e-9 else (None, False)


def _refined_tip(calib, tip_left, refine_disparity, instrument, disparity, min_depth, max_depth):
    """The left tip (rectified) triangulated with the disparity refine_disparity gives, or None (no
    refinement, or one that leaves the depth range)."""
    if refine_disparity is None:
        return None
    refined = refine_disparity(instrument, float(disparity))
    if refined is None:
        return None
    xyz = triangulate(calib.P_left, calib.P_right, [tip_left], [(tip_left[0] - refined, tip_left[1])])[0]
    depth = depth_in(calib.P_left, xyz[None])[0]
    return xyz if np.all(np.isfinite(xyz)) and min_depth <= depth <= max_depth else None


def _matched_by_masks(left, right, calib, matched, tips_l, left_map, right_map, net_scale, limits,
                      refine_disparity, similar_area, min_depth, max_depth, min_cover=0.5):
    """[(left index, right index, tip xyz)] for instruments the tips left unmatched: the two eyes may put
    one instrument's tip in different places (its claspers taken for wrist in one of them), yet its
    masks agree. The left mask near the tip is slid along the rows of each unmatched right mask through
    the disparity range; where it is covered (`min_cover`) the images refine the disparity at the tip,
    and only a pair the images confirm is matched (greedy, best covered first). similar_area[a, b]:
    the pair's areas are within match_instruments' max_area_ratio."""
    used_left, used_right = {a for a, _ in matched}, {b for _, b in matched}
    free_left = [a for a in range(len(left)) if a not in used_left]
    free_right = [b for b in range(len(right)) if b not in used_right]
    low, high = (math.floor(limits[0] / net_scale), math.ceil(limits[1] / net_scale))  # network px
    h, w = left_map.shape
    reach = max(4, round(_TIP_REACH * w))
    candidates = []
    for a in free_left:
        u, v = ((np.asarray(left[a].tip) + 0.5) / net_scale - 0.5).round().astype(int)
        rows, cols = slice(max(v - reach, 0), min(v + reach + 1, h)), slice(max(u - reach, 0), min(u + reach + 1, w))
        near_tip = (left_map[rows, cols] == left[a].index).astype(np.float32)
        pixels = float(near_tip.sum())
        if pixels < 4:
            continue
        for b in free_right:
            if not similar_area[a, b]:
                continue
            # The right mask's rows of the window, from column cols.start - high to cols.stop - low.
            strip = np.zeros((near_tip.shape[0], near_tip.shape[1] + high - low), np.float32)
            x0 = cols.start - high
            src = slice(max(x0, 0), min(cols.stop - low, w))
            if src.start < src.stop:
                strip[:, src.start - x0:src.stop - x0] = right_map[rows, src] == right[b].index
            overlap = cv2.matchTemplate(strip, near_tip, cv2.TM_CCORR)[0]  # index j: a shift of high - j
            j = int(np.argmax(overlap))
            cover = overlap[j] / pixels
            if cover < min_cover:
                continue
            tip_xyz = _refined_tip(calib, tips_l[a], refine_disparity, left[a], (high - j) * net_scale,
                                   min_depth, max_depth)
            if tip_xyz is not None:
                candidates.append((-cover, a, b, tip_xyz))
    out = []
    for _, a, b, tip_xyz in sorted(candidates, key=lambda c: c[:3]):
        if a not in used_left and b not in used_right:
            used_left.add(a)
            used_right.add(b)
            out.append((a, b, tip_xyz))
    return out


def match_instruments(left, right, calib, *, left_map=None, right_map=None, net_scale=1.0,
                      max_epipolar_px=DEFAULT_MAX_EPIPOLAR_PX, min_depth=0.005, max_depth=0.5,
                      max_area_ratio=DEFAULT_MAX_AREA_RATIO, min_mask_iou=0.05, refine_disparity=None):
    """Pairs left and right instruments (inference/instruments.Instrument) without looking at types:
    tips within `max_epipolar_px` of the epipolar line (rectified), a disparity that puts the tip between
    min_depth and max_depth (m), areas within `max_area_ratio`, and, with the network-resolution
    instance maps, masks that overlap once shifted by the disparity (`net_scale`: input px per network px).
    One-to-one (Hungarian) on epipolar distance + area mismatch + (1 - shifted IoU); each pair's tip is
    triangulated and its shaft axis estimated. refine_disparity(left instrument, disparity of the two
    tips) -> a better disparity of the left tip or None (tip_disparity.py; used for a horizontal rig
    whose images are rectified, as the search runs along rows): the tip
    is then triangulated from the left tip and that disparity; with it, instruments whose tips cannot be
    paired are also matched by their masks, where the images confirm them (_matched_by_masks).
    Returns [StereoMatch] sorted by left index."""
    if not left or not right:
        return []
    tips_l = calib.rectified('left', [i.tip for i in left])
    tips_r = calib.rectified('right', [i.tip for i in right])
    li, rj = np.repeat(np.arange(len(left)), len(right)), np.tile(np.arange(len(right)), len(left))
    distance = epipolar_distance(calib.F, tips_l[li], tips_r[rj])
    log_ratio = math.log(max(max_area_ratio, 1.0 + 1e-9))
    area = np.abs(np.log(np.array([max(left[i].area_px, 1.0) / max(right[j].area_px, 1.0) for i, j in zip(li, rj)])))
    xyz = triangulate(calib.P_left, calib.P_right, tips_l[li], tips_r[rj])
    with np.errstate(invalid='ignore'):
        d1, d2 = depth_in(calib.P_left, xyz), depth_in(calib.P_right, xyz)
        feasible = ((distance <= max_epipolar_px) & (area <= log_ratio) & np.isfinite(d1)
                    & (d1 >= min_depth) & (d1 <= max_depth) & (d2 > 0))
    disparity = tips_l[li, 0] - tips_r[rj, 0]
    limits = calib.disparity_range(min_depth, max_depth)
    if limits is None or calib.rectify_left is not None or calib.rectify_right is not None:
        refine_disparity = None  # the images are searched along rows: a horizontal rig, rectified images only
    if limits is not None:
        feasible &= (disparity >= limits[0] - max_epipolar_px) & (disparity <= limits[1] + max_epipolar_px)
    overlap = np.ones(len(li))
    if left_map is not None and right_map is not None:
        raw_shift = np.array([left[i].tip[0] - right[j].tip[0] for i, j in zip(li, rj)]) / net_scale
        for k, (i, j) in enumerate(zip(li, rj)):
            if feasible[k]:
                overlap[k] = _shifted_iou(left_map == left[i].index, right_map == right[j].index, raw_shift[k])
        feasible &= overlap >= min_mask_iou
    cost = np.where(feasible, distance / max_epipolar_px + area / log_ratio + (1.0 - overlap), _INFEASIBLE)
    cost = cost.reshape(len(left), len(right))
    tips = {}  # (left, right) -> (tip xyz, from the images)
    for a, b in zip(*linear_sum_assignment(cost)):
        k = a * len(right) + b
        if feasible[k]:
            tip_xyz = _refined_tip(calib, tips_l[a], refine_disparity, left[a], disparity[k], min_depth, max_depth)
            tips[a, b] = (xyz[k], False) if tip_xyz is None else (tip_xyz, True)
    if refine_disparity is not None and left_map is not None and right_map is not None:
        similar_area = (area <= log_ratio).reshape(len(left), len(right))
        for a, b, tip_xyz in _matched_by_masks(left, right, calib, tips, tips_l, left_map, right_map, net_scale,
                                               limits, refine_disparity, similar_area, min_depth, max_depth):
            tips[a, b] = (tip_xyz, True)
    matches = []
    for (a, b), (tip_xyz, from_images) in tips.items():
        point_l = calib.rectified('left', [left[a].axis_point])[0]
        ends_r = calib.rectified('right', [right[b].axis_point,
                                           np.add(right[b].axis_point, np.multiply(right[b].axis_dir, 20.0))])
        taper = left[a].shaft_taper
        if taper is not None:
            near, far = calib.rectified('left', [taper.near, taper.far])
            taper = (near, far, taper.width_ratio)
        axis, from_stereo = _axis_3d(calib, tip_xyz, point_l, ends_r[0], ends_r[1] - ends_r[0], taper)
        matches.append(StereoMatch(int(a), int(b), float(distance[a * len(right) + b]),
                                   tuple(float(c) for c in tip_xyz), axis, from_stereo, from_images))
    return sorted(matches, key=lambda m: m.left)
