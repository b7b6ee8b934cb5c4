"""A rectified stereo pinhole pair in the ROS camera_info convention (units: pixels and metres)."""
from dataclasses import dataclass, replace

import numpy as np

# EndoVis-like defaults at 1280x1024, read off real calibration files (see docs/SYNTH.md):
# EndoVis 2018 camera_calibration.txt focal lengths are 1051..1084 px and |T| is 4.28..4.37 mm;
# the rectified SCARED pair has its principal point at (642.19, 520.72). We keep only numbers.
ENDOVIS_WIDTH, ENDOVIS_HEIGHT = 1280, 1024
ENDOVIS_FOCAL_PX = 1050.0
ENDOVIS_BASELINE_M = 0.00435
ENDOVIS_PRINCIPAL_OFFSET = (2.19, 8.72)  # (cx, cy) minus the image centre, px


@dataclass(frozen=True)
class StereoRig:
    """Rectified pair: both eyes share K and R = I; the right eye sits `baseline` metres along +x."""
    fx: float
    fy: float
    cx: float
    cy: float
    baseline: float
    width: int
    height: int

    @classmethod
    def endovis_like(cls, width=ENDOVIS_WIDTH, height=ENDOVIS_HEIGHT, scale=1.0):
        """A da Vinci-like endoscope: f ~ 1050 px and B ~ 4.4 mm at 1280x1024, then `scaled(scale)`."""
        ox, oy = ENDOVIS_PRINCIPAL_OFFSET
        rig = cls(fx=ENDOVIS_FOCAL_PX, fy=ENDOVIS_FOCAL_PX,
                  cx=(width - 1) / 2 + ox, cy=(height - 1) / 2 + oy,
                  baseline=ENDOVIS_BASELINE_M, width=int(width), height=int(height))
        return rig if scale == 1.0 else rig.scaled(scale)

    def scaled(self, s):
        """The same optics sampled at `s` times the resolution (what cv2.resize does to the images)."""
        return self.resized(round(self.width * s), round(self.height * s))

    def resized(self, width, height):
        """The same field of view on a `width` x `height` sensor (pixel centres at integer coordinates,
        as cv2.resize maps them); non-uniform when the aspect ratio changes."""
        if width < 1 or height < 1:
            raise ValueError(f'image size must be positive, got {width}x{height}')
        sx, sy = width / self.width, height / self.height
        return replace(self, fx=self.fx * sx, fy=self.fy * sy,
                       cx=(self.cx + 0.5) * sx - 0.5, cy=(self.cy + 0.5) * sy - 0.5,
                       width=int(width), height=int(height))

    @property
    def size(self):
        """(height, width), the numpy shape order."""
        return self.height, self.width

    @property
    def K(self):
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def P_left(self):
        return np.hstack([self.K, np.zeros((3, 1))])

    @property
    def P_right(self):
        P = self.P_left
        P[0, 3] = -self.fx * self.baseline
        return P

    def P(self, side):
        return {'left': self.P_left, 'right': self.P_right}[_check_side(side)]

    def eye_origin(self, side):
        """Optical centre of an eye in the left optical frame (metres)."""
        return np.array([self.baseline if _check_side(side) == 'right' else 0.0, 0.0, 0.0])

    def project(self, xyz, side='left'):
        """Pixel coordinates (..., 2) of points (..., 3) in the left optical frame."""
        xyz = np.asarray(xyz, dtype=np.float64)
        x = xyz[..., 0] - self.eye_origin(side)[0]
        return np.stack([self.fx * x / xyz[..., 2] + self.cx,
                         self.fy * xyz[..., 1] / xyz[..., 2] + self.cy], axis=-1)

    def disparity(self, depth):
        """Left-minus-right horizontal disparity (px) of a point at `depth` metres."""
        return self.fx * self.baseline / np.asarray(depth)

    def camera_info(self, side):
        """sensor_msgs/CameraInfo fields (row-major flat lists) for one eye of the rectified pair."""
        return dict(K=self.K.ravel().tolist(), D=[0.0] * 5, R=np.eye(3).ravel().tolist(),
                    P=self.P(side).ravel().tolist(), width=self.width, height=self.height,
                    distortion_model='plumb_bob')


def _check_side(side):
    if side not in ('left', 'right'):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    return side
