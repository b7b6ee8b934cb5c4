"""camera_info checks before a calibration is installed: every unusable one named, good ones kept."""
import math

import numpy as np
import pytest

from mffseg_ros.errors import DataError
from mffseg_ros.inference.camera_model import check_camera_info, described_size

H, W = 1024, 1280
K = [1000.0, 0.0, 640.0, 0.0, 1000.0, 512.0, 0.0, 0.0, 1.0]
I3 = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
P = [1000.0, 0.0, 640.0, 0.0, 0.0, 1000.0, 512.0, 0.0, 0.0, 0.0, 1.0, 0.0]
D5 = [-0.1, 0.01, 0.001, -0.001, 0.0]


def info(**changes):
    fields = dict(k=K, d=D5, r=I3, p=P, distortion_model='plumb_bob', height=H, width=W)
    fields.update(changes)
    return fields


def rotation(degrees):
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return [c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0]


def test_a_calibrated_raw_camera_gets_a_rectifier():
    cal = check_camera_info(**info(r=rotation(1.0)), image_size=(H, W))
    assert cal.P.shape == (3, 4) and cal.image_size == (H, W)
    uv = cal.rectify(np.array([[640.0, 512.0], [100.0, 100.0]]))
    assert np.all(np.isfinite(uv)) and not np.allclose(uv[1], (100.0, 100.0))


@pytest.mark.parametrize('changes', [dict(d=[]), dict(d=[0.0] * 3), dict(d=[0.0] * 5, k=[0.0] * 9),
                                     dict(r=[0.0] * 9, d=[0.0] * 5), dict(distortion_model='')])
def test_rectified_or_undistorted_cameras_need_no_rectifier(changes):
    changes.setdefault('d', [])
    assert check_camera_info(**info(**changes)).rectify is None


BAD = {
    'D of 3 for plumb_bob': (dict(d=[0.1, 0.01, 0.001]), 'D has 3 coefficients; plumb_bob takes 5'),
    'D of 6': (dict(d=[0.1] * 6), 'D has 6 coefficients'),
    'NaN in D': (dict(d=[math.nan] + D5[1:]), 'D has non-finite values'),
    'NaN in R': (dict(r=[math.nan] + I3[1:]), 'R has non-finite values'),
    'R not orthonormal': (dict(r=[2.0] + I3[1:]), 'R is not a rotation'),
    'R a reflection': (dict(r=[-1.0] + I3[1:]), 'R is not a rotation'),
    'P all zero (uncalibrated)': (dict(p=[0.0] * 12), 'not calibrated'),
    'inf in P': (dict(p=[math.inf] + P[1:]), 'P has non-finite values'),
    'negative focal length in P': (dict(p=[-1000.0] + P[1:]), 'no positive focal lengths'),
    'K not a camera matrix': (dict(k=K[:8] + [0.0]), 'K is not a camera matrix'),
    'unknown distortion model': (dict(distortion_model='kannala_brandt_9'), 'not supported'),
    'equidistant with 5 coefficients': (dict(distortion_model='equidistant'), 'equidistant takes 4'),
}


@pytest.mark.parametrize('case', list(BAD))
def test_unusable_camera_infos_are_named(case):
    changes, reason = BAD[case]
    with pytest.raises(DataError, match=reason):
        check_camera_info(**info(**changes))


def test_image_size_must_match_the_images_seen():
    with pytest.raises(DataError, match='describes 1280x1024 images, the camera sends 640x512'):
        check_camera_info(**info(), image_size=(512, 640))
    # binning 2 describes half-size images; an unset size cannot be compared
    assert check_camera_info(**info(binning_x=2, binning_y=2), image_size=(512, 640)).image_size == (512, 640)
    assert check_camera_info(**info(height=0, width=0), image_size=(512, 640)).image_size is None


def test_described_size_applies_roi_then_binning():
    assert described_size(1024, 1280) == (1024, 1280)
    assert described_size(1024, 1280, roi_height=400, roi_width=600) == (400, 600)
    assert described_size(1024, 1280, binning_x=2, binning_y=4, roi_height=400, roi_width=600) == (100, 300)
    assert described_size(0, 0) is None
