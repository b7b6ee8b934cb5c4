"""Check a sensor_msgs/CameraInfo before it is used for 3-D: one bad calibration message must not
break every later frame (a NaN or a wrong-length D makes OpenCV's undistortion fail on each tip).

No rclpy: the node passes the message fields in. `check_camera_info` returns a Calibration or
raises DataError naming the first problem, so the node can count it, warn and keep the last good one.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mffseg_ros.errors import DataError
from mffseg_ros.inference.stereo import pixel_rectifier, projection_from_camera_info

# distortion_model -> accepted lengths of D (REP 104 / camera_calibration_parsers; 0 = no distortion)
D_LENGTHS = {'plumb_bob': (0, 5), 'rational_polynomial': (0, 8), 'equidistant': (0, 4)}
ROTATION_TOL = 1e-3


@dataclass(frozen=True)
class Calibration:
    P: np.ndarray                       # 3x4 projection of the rectified camera
    rectify: Callable | None            # raw pixel -> rectified pixel (None: images already rectified)
    image_size: tuple[int, int] | None  # (height, width) of the images it describes, None when not given


def _matrix(values, shape, name):
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size != shape[0] * shape[1]:
        raise DataError(f'{name} has {arr.size} numbers, expected {shape[0] * shape[1]}')
    if not np.all(np.isfinite(arr)):
        raise DataError(f'{name} has non-finite values')
    return arr.reshape(shape)


def _check_intrinsics(K):
    if not np.any(K):
        return  # unset: the images are taken as rectified
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], (0, 0, 1)) or K[1, 0] != 0:
        raise DataError(f'K is not a camera matrix [fx s cx; 0 fy cy; 0 0 1] with fx, fy > 0: {K.ravel().tolist()}')


def _check_rotation(R):
    if not np.any(R):
        return  # unset (all zeros) means no rectifying rotation
    if (not np.allclose(R.T @ R, np.eye(3), atol=ROTATION_TOL)
            or abs(np.linalg.det(R) - 1.0) > ROTATION_TOL):
        raise DataError(f'R is not a rotation (R^T R != I or det != 1): {np.round(R, 6).ravel().tolist()}')


def _check_projection(P):
    P = projection_from_camera_info(P)  # finite, left 3x3 non-singular
    if P[0, 0] <= 0 or P[1, 1] <= 0:
        raise DataError(f'P has no positive focal lengths: {P.ravel().tolist()}')
    return P


def described_size(height, width, binning_x=0, binning_y=0, roi_height=0, roi_width=0):
    """(height, width) of the images a camera_info describes (ROI and binning applied), None if unset."""
    if roi_height and roi_width:
        height, width = roi_height, roi_width
    if not height or not width:
        return None
    return int(height) // max(int(binning_y), 1), int(width) // max(int(binning_x), 1)


def check_camera_info(*, k, d, r, p, distortion_model='', height=0, width=0, binning_x=0, binning_y=0,
                      roi_height=0, roi_width=0, image_size=None):
    """Calibration from CameraInfo fields, or DataError with the reason. `image_size` (height, width)
    of the images last seen from that camera, when known, must match the size the info describes."""
    model = str(distortion_model or '').strip().lower() or 'plumb_bob'
    if model not in D_LENGTHS:
        raise DataError(f'distortion_model {distortion_model!r} is not supported ({", ".join(D_LENGTHS)})')
    D = np.asarray(d if d is not None else (), dtype=np.float64).ravel()
    if not np.all(np.isfinite(D)):
        raise DataError(f'D has non-finite values: {D.tolist()}')
    if D.size not in D_LENGTHS[model] and np.any(D):
        raise DataError(f'D has {D.size} coefficients; {model} takes {D_LENGTHS[model][-1]}')
    K = _matrix(k, (3, 3), 'K')
    R = _matrix(r, (3, 3), 'R')
    _check_intrinsics(K)
    _check_rotation(R)
    P = _check_projection(_matrix(p, (3, 4), 'P'))
    size = described_size(height, width, binning_x, binning_y, roi_height, roi_width)
    if size is not None and image_size is not None and tuple(image_size) != size:
        raise DataError(f'camera_info describes {size[1]}x{size[0]} images, the camera sends '
                        f'{image_size[1]}x{image_size[0]}')
    if D.size not in D_LENGTHS[model]:  # all-zero D of an odd length: no distortion
        D = D[:0]
    return Calibration(P=P, rectify=pixel_rectifier(K, D, R, P, model), image_size=size)
