"""EndoVis stereo calibration (`camera_calibration.txt`) and its stereo rectification.

The file holds one `Key: numbers  // comment` line per value: image size, focal lengths, principal
points, skew and distortion (k1 k2 p1 p2 k3) of both cameras, and the left-to-right extrinsics as a
Rodrigues vector plus a translation in millimetres (x_right = R x_left + T, OpenCV convention).
Rectification gives the ROS camera_info R and P of both eyes; P_right[0, 3] = -fx' * baseline (m).
"""
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from mffseg_ros.errors import DataError

log = logging.getLogger(__name__)

# EndoVis 2017 frames are 1920x1080 with the calibrated 1280x1024 image at this offset.
ENDOVIS_CROP = (320, 28, 1280, 1024)  # x, y, width, height
ENDOVIS_FULL_SIZE = (1920, 1080)  # width, height

# key -> number of values; keys not listed here are reported as unrecognised.
_REQUIRED = {
    'Width': 1, 'Height': 1,
    'Camera-0-F': 2, 'Camera-0-C': 2, 'Camera-0-K': 5,
    'Camera-1-F': 2, 'Camera-1-C': 2, 'Camera-1-K': 5,
    'Extrinsic-Omega': 3, 'Extrinsic-T': 3,
}
_OPTIONAL = {'Camera-0-Alpha': 1, 'Camera-1-Alpha': 1}
_LINE = re.compile(r'^\s*([A-Za-z][\w-]*)\s*:\s*(.*?)\s*(?://.*)?$')


@dataclass(frozen=True)
class Rectification:
    """Rectifying rotations (3x3), projections (3x4, metres) and the 4x4 reprojection matrix Q."""
    R_left: np.ndarray
    R_right: np.ndarray
    P_left: np.ndarray
    P_right: np.ndarray
    Q: np.ndarray


@dataclass(frozen=True)
class StereoCalibration:
    """Raw (unrectified) stereo calibration: intrinsics of both eyes and left-to-right extrinsics."""
    width: int
    height: int
    K_left: np.ndarray   # 3x3
    D_left: np.ndarray   # 5, plumb_bob (k1 k2 p1 p2 k3)
    K_right: np.ndarray
    D_right: np.ndarray
    R: np.ndarray        # 3x3, left camera frame -> right camera frame
    T: np.ndarray        # 3, metres
    source: str = ''
    # Pixel (0, 0) of these images in the calibrated image, and that image's size: rectification is
    # computed there and shifted, so a crop or padding never changes the rectified optics.
    origin: tuple = (0.0, 0.0)
    native_size: tuple = None

    @property
    def baseline(self):
        """Distance between the optical centres in metres."""
        return float(np.linalg.norm(self.T))

    def with_origin(self, x, y, width, height):
        """The same cameras seen through an image whose pixel (0, 0) lies at (x, y) of the calibrated
        image and whose size is width x height: a crop for x, y >= 0, padding for negative offsets."""
        def shift(K):
            K = K.copy()
            K[0, 2] -= x
            K[1, 2] -= y
            return K
        return replace(self, width=int(width), height=int(height),
                       K_left=shift(self.K_left), K_right=shift(self.K_right),
                       origin=(self.origin[0] + x, self.origin[1] + y),
                       native_size=self.native_size or (self.width, self.height))

    def endovis_full_frame(self):
        """Calibration of the uncropped 1920x1080 EndoVis 2017 frames (the file is for the 1280x1024 crop)."""
        x, y, _, _ = ENDOVIS_CROP
        return self.with_origin(-x, -y, *ENDOVIS_FULL_SIZE)

    def rectify(self, alpha=0.0):
        """Stereo rectification (cv2.stereoRectify, zero disparity at infinity) computed on the
        calibrated image; alpha=0 keeps only valid pixels, 1 keeps all source pixels."""
        x, y = self.origin
        native = self.with_origin(-x, -y, *(self.native_size or (self.width, self.height)))
        R1, R2, P1, P2, Q, _, _ = cv2.stereoRectify(
            native.K_left, native.D_left, native.K_right, native.D_right, (native.width, native.height),
            native.R, native.T.reshape(3, 1), flags=cv2.CALIB_ZERO_DISPARITY, alpha=alpha)
        for P in (P1, P2):  # back to this image's pixel grid
            P[0, 2] -= x
            P[1, 2] -= y
        Q[0, 3] += x
        Q[1, 3] += y
        return Rectification(R1, R2, P1, P2, Q)

    def camera_info(self, side, rectification=None):
        """ROS sensor_msgs/CameraInfo fields of one eye as plain lists (row-major k, r, p)."""
        if side not in ('left', 'right'):
            raise ValueError(f"side must be 'left' or 'right', not {side!r}")
        rect = rectification or self.rectify()
        K, D = (self.K_left, self.D_left) if side == 'left' else (self.K_right, self.D_right)
        R, P = (rect.R_left, rect.P_left) if side == 'left' else (rect.R_right, rect.P_right)
        return {'width': self.width, 'height': self.height, 'distortion_model': 'plumb_bob',
                'd': [float(v) for v in D], 'k': [float(v) for v in K.ravel()],
                'r': [float(v) for v in R.ravel()], 'p': [float(v) for v in P.ravel()]}


def load_endovis_calibration(path):
    """Read an EndoVis `camera_calibration.txt`; DataError with the path and reason otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f'{path}: calibration file not found')
    try:
        text = path.read_bytes().decode('utf-8')
    except UnicodeDecodeError:
        raise DataError(f'{path}: not an EndoVis camera_calibration.txt (binary content)') from None
    except OSError as e:
        raise DataError(f'{path}: cannot read calibration file ({e.strerror})') from None
    return parse_endovis_calibration(text, source=str(path))


def parse_endovis_calibration(text, source='<string>'):
    values, ignored = {}, []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        key = match.group(1) if match else None
        count = _REQUIRED.get(key) or _OPTIONAL.get(key)
        if count is None:
            ignored.append(lineno)
            continue
        if key in values:
            raise DataError(f'{source}:{lineno}: {key} given twice')
        try:
            numbers = [float(tok) for tok in match.group(2).split()]
        except ValueError:
            raise DataError(f'{source}:{lineno}: {key} must be numbers, got {match.group(2)!r}') from None
        if len(numbers) != count or not np.all(np.isfinite(numbers)):
            raise DataError(f'{source}:{lineno}: {key} needs {count} finite number(s), '
                            f'got {match.group(2)!r}')
        values[key] = numbers
    missing = [k for k in _REQUIRED if k not in values]
    if missing:
        raise DataError(f'{source}: not an EndoVis camera_calibration.txt '
                        f'(missing {", ".join(missing)})')
    if ignored:  # e.g. a trailing dump in another format in some 2018 files
        log.warning('%s: ignored %d unrecognised line(s) (first: line %d)', source, len(ignored), ignored[0])

    width, height = values['Width'][0], values['Height'][0]
    if width <= 0 or height <= 0 or width != int(width) or height != int(height):
        raise DataError(f'{source}: image size must be positive integers, got {width} x {height}')

    def intrinsics(cam):
        (fx, fy), (cx, cy) = values[f'Camera-{cam}-F'], values[f'Camera-{cam}-C']
        if fx <= 0 or fy <= 0:
            raise DataError(f'{source}: Camera-{cam}-F must be positive, got {fx} {fy}')
        skew = values.get(f'Camera-{cam}-Alpha', [0.0])[0] * fx  # Bouguet: alpha_c is relative to fx
        K = np.array([[fx, skew, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        return K, np.array(values[f'Camera-{cam}-K'])

    K_left, D_left = intrinsics(0)
    K_right, D_right = intrinsics(1)
    R, _ = cv2.Rodrigues(np.array(values['Extrinsic-Omega']))
    T = np.array(values['Extrinsic-T']) / 1000.0  # mm -> m
    if np.linalg.norm(T) == 0:
        raise DataError(f'{source}: Extrinsic-T is zero; a stereo rig needs a baseline')
    return StereoCalibration(int(width), int(height), K_left, D_left, K_right, D_right, R, T, source)
