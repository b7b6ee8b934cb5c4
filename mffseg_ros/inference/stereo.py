"""Stereo: match left and right instrument tips by type and the epipolar constraint, triangulate them.

Projection matrices are 3x4 (sensor_msgs/CameraInfo.p). 3-D points come out in the frame both P's
project from, in the units of their translation: for ROS camera_infos that is the left (rectified)
camera's optical frame in metres, since P_right = [fx 0 cx Tx; 0 fy cy 0; 0 0 1 0] with Tx = -fx * baseline.
"""
import dataclasses
import math

import numpy as np
from scipy.optimize import linear_sum_assignment

from mffseg_ros.errors import DataError

DEFAULT_MAX_EPIPOLAR_PX = 10.0  # tip centroids of one instrument in two views: segmentation and distortion
DEFAULT_MAX_AREA_RATIO = 3.0  # one instrument seen by two cameras 4 mm apart has a similar area
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


def match_pairs(tips_left, tips_right, P_left, P_right, *, max_epipolar_px=DEFAULT_MAX_EPIPOLAR_PX,
                max_area_ratio=DEFAULT_MAX_AREA_RATIO, min_depth=0.0, max_depth=math.inf, same_source=True):
    """Assign right tips to left tips: same type (and tip source), within `max_epipolar_px` of the epipolar
    line, areas within `max_area_ratio`, triangulating in front of both cameras within (min_depth,
    max_depth]. Optimal per type (Hungarian) on epipolar distance plus area mismatch.
    Returns [(left index, right index, epipolar distance px, xyz)]."""
    P1, P2 = projection_from_camera_info(P_left), projection_from_camera_info(P_right)
    F = fundamental_from_projections(P1, P2)
    log_ratio = math.log(max(max_area_ratio, 1.0 + 1e-9))
    pairs = []
    for type_id in sorted({t.type_id for t in tips_left} & {t.type_id for t in tips_right}):
        left = [i for i, t in enumerate(tips_left) if t.type_id == type_id]
        right = [j for j, t in enumerate(tips_right) if t.type_id == type_id]
        li, rj = np.repeat(left, len(right)), np.tile(right, len(left))  # every candidate pair
        uv1 = np.array([(tips_left[i].u, tips_left[i].v) for i in li])
        uv2 = np.array([(tips_right[j].u, tips_right[j].v) for j in rj])
        distance = epipolar_distance(F, uv1, uv2)
        areas = np.array([(max(tips_left[i].area_px, 1), max(tips_right[j].area_px, 1)) for i, j in zip(li, rj)])
        area = np.abs(np.log(areas[:, 0] / areas[:, 1]))
        xyz = triangulate(P1, P2, uv1, uv2)
        with np.errstate(invalid='ignore'):
            d1, d2 = depth_in(P1, xyz), depth_in(P2, xyz)
            feasible = ((distance <= max_epipolar_px) & (area <= log_ratio) & np.isfinite(d1)
                        & (d1 > min_depth) & (d1 <= max_depth) & (d2 > 0))
        if same_source:
            feasible &= np.array([tips_left[i].source == tips_right[j].source for i, j in zip(li, rj)])
        cost = np.where(feasible, distance / max_epipolar_px + area / log_ratio, _INFEASIBLE)
        cost = cost.reshape(len(left), len(right))
        for a, b in zip(*linear_sum_assignment(cost)):
            k = a * len(right) + b
            if feasible[k]:
                pairs.append((left[a], right[b], float(distance[k]), tuple(float(c) for c in xyz[k])))
    return sorted(pairs)


def match_and_triangulate(tips_left, tips_right, P_left, P_right, **options):
    """Left tips, with xyz filled (metres, left camera frame) where a right tip matches; NaN elsewhere.
    Options: see match_pairs. The inputs are not modified."""
    matched = {i: xyz for i, _, _, xyz in match_pairs(tips_left, tips_right, P_left, P_right, **options)}
    return [dataclasses.replace(t, xyz=matched[i]) if i in matched else t for i, t in enumerate(tips_left)]
