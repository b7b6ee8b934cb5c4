"""EndoVis camera_calibration.txt parsing, crop offsets and stereo rectification."""
import cv2
import numpy as np
import pytest

from mffseg_ros.data.calibration import (
    ENDOVIS_CROP,
    load_endovis_calibration,
    parse_endovis_calibration,
)
from mffseg_ros.errors import DataError

# Written in the EndoVis format (values made up for the test, CRLF line ends like some real files).
CALIBRATION = '\r\n'.join([
    'Width: 1280                      // width of the images in pixels',
    'Height: 1024                     // height of the images in pixels',
    'Camera-0-F: 1060.50 1060.25      // left camera x,y focal dist in pixels',
    'Camera-0-C: 590.00 520.00        // left camera x,y center in pixels',
    'Camera-0-K: -0.01 0.02 0.001 -0.0005 0.003   // left camera radial distortion',
    'Camera-1-F: 1059.80 1059.60      // right camera x,y focal dist in pixels',
    'Camera-1-C: 690.00 522.00        // right camera x,y center in pixels',
    'Camera-1-Alpha: 0.00000          // right camera skew',
    'Camera-1-K: -0.012 0.018 0.0 0.0002 0.0      // right camera radial distortion',
    'Extrinsic-Omega: 0.002 -0.015 0.001          // left to right camera rotation',
    'Extrinsic-T: -4.40 0.05 -0.03                // left to right camera position',
])


def write(tmp_path, text, name='camera_calibration.txt'):
    path = tmp_path / name
    path.write_text(text, newline='')
    return path


def test_parses_intrinsics_and_extrinsics(tmp_path):
    calib = load_endovis_calibration(write(tmp_path, CALIBRATION))
    assert (calib.width, calib.height) == (1280, 1024)
    np.testing.assert_allclose(calib.K_left, [[1060.5, 0, 590], [0, 1060.25, 520], [0, 0, 1]])
    np.testing.assert_allclose(calib.K_right[:2, 2], [690, 522])
    np.testing.assert_allclose(calib.D_left, [-0.01, 0.02, 0.001, -0.0005, 0.003])
    np.testing.assert_allclose(calib.T, [-0.0044, 0.00005, -0.00003])  # mm -> m
    np.testing.assert_allclose(calib.R, cv2.Rodrigues(np.array([0.002, -0.015, 0.001]))[0])
    assert calib.baseline == pytest.approx(np.linalg.norm([4.40, 0.05, 0.03]) / 1000)


def test_rectified_projection_matrices_follow_ros_convention(tmp_path):
    calib = load_endovis_calibration(write(tmp_path, CALIBRATION))
    left, right = calib.camera_info('left'), calib.camera_info('right')
    P_left, P_right = np.reshape(left['p'], (3, 4)), np.reshape(right['p'], (3, 4))
    assert P_left[0, 3] == 0
    assert P_right[0, 3] == pytest.approx(-P_right[0, 0] * calib.baseline, rel=1e-9)
    np.testing.assert_allclose(P_left[:, :3], P_right[:, :3])  # same rectified intrinsics
    for info in (left, right):
        R = np.reshape(info['r'], (3, 3))
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert len(info['d']) == 5 and info['distortion_model'] == 'plumb_bob'


def project_raw(calib, points_left):
    """Pixels of left-camera-frame points in the raw (distorted) left and right images."""
    zero = np.zeros(3)
    left, _ = cv2.projectPoints(points_left, zero, zero, calib.K_left, calib.D_left)
    right, _ = cv2.projectPoints(points_left, cv2.Rodrigues(calib.R)[0], calib.T, calib.K_right, calib.D_right)
    return left, right


def rectify_points(pixels, K, D, info):
    return cv2.undistortPoints(pixels, K, D, R=np.reshape(info['r'], (3, 3)),
                               P=np.reshape(info['p'], (3, 4))).reshape(-1, 2)


@pytest.mark.parametrize('full_frame', [False, True])
def test_a_3d_point_lands_on_the_same_rectified_row_in_both_eyes(tmp_path, full_frame):
    calib = load_endovis_calibration(write(tmp_path, CALIBRATION))
    if full_frame:
        calib = calib.endovis_full_frame()
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(-0.02, 0.02, 20), rng.uniform(-0.015, 0.015, 20),
                              rng.uniform(0.04, 0.15, 20)])
    raw_left, raw_right = project_raw(calib, points)
    rect_left = rectify_points(raw_left, calib.K_left, calib.D_left, calib.camera_info('left'))
    rect_right = rectify_points(raw_right, calib.K_right, calib.D_right, calib.camera_info('right'))
    np.testing.assert_allclose(rect_left[:, 1], rect_right[:, 1], atol=1e-3)
    # Triangulating with the two P matrices recovers the depth (rectified frame ~ left frame).
    P_left = np.reshape(calib.camera_info('left')['p'], (3, 4))
    P_right = np.reshape(calib.camera_info('right')['p'], (3, 4))
    X = cv2.triangulatePoints(P_left, P_right, rect_left.T, rect_right.T)
    X = (X[:3] / X[3]).T
    R_left = np.reshape(calib.camera_info('left')['r'], (3, 3))
    np.testing.assert_allclose(X, points @ R_left.T, atol=1e-6)


def test_full_frame_shifts_principal_points_by_the_crop_offset(tmp_path):
    calib = load_endovis_calibration(write(tmp_path, CALIBRATION))
    full = calib.endovis_full_frame()
    x, y, _, _ = ENDOVIS_CROP
    assert (full.width, full.height) == (1920, 1080)
    np.testing.assert_allclose(full.K_left[:2, 2] - calib.K_left[:2, 2], [x, y])
    np.testing.assert_allclose(full.K_right[:2, 2] - calib.K_right[:2, 2], [x, y])
    np.testing.assert_allclose(full.K_left[[0, 1], [0, 1]], calib.K_left[[0, 1], [0, 1]])
    # Rectified principal points move by the same offset; the baseline term does not change.
    P, P_full = np.reshape(calib.camera_info('right')['p'], (3, 4)), np.reshape(full.camera_info('right')['p'], (3, 4))
    assert P_full[0, 3] / P_full[0, 0] == pytest.approx(P[0, 3] / P[0, 0])


def test_missing_camera0_skew_and_trailing_foreign_lines_are_tolerated(tmp_path, caplog):
    text = CALIBRATION.replace('\r\n', '\n') + "\n\n{'Header': {'timestamp': 15312}, 'Entry': {}}"
    calib = load_endovis_calibration(write(tmp_path, text))
    assert calib.K_left[0, 1] == 0
    assert 'ignored 1 unrecognised line' in caplog.text


@pytest.mark.parametrize('text, reason', [
    ('%YAML:1.0\ncamera_matrix: !!opencv-matrix\n  rows: 3\n', 'not an EndoVis camera_calibration.txt'),
    (CALIBRATION.replace('Camera-1-F: 1059.80 1059.60', 'Camera-1-F: 1059.80'), 'Camera-1-F needs 2'),
    (CALIBRATION.replace('Extrinsic-T: -4.40 0.05 -0.03', 'Extrinsic-T: a b c'), 'must be numbers'),
    (CALIBRATION.replace('Extrinsic-T: -4.40 0.05 -0.03', 'Extrinsic-T: 0 0 0'), 'needs a baseline'),
    (CALIBRATION.replace('Camera-0-F: 1060.50', 'Camera-0-F: -1060.50'), 'must be positive'),
    (CALIBRATION + '\r\nWidth: 640', 'Width given twice'),
])
def test_other_formats_raise_data_error_with_path(tmp_path, text, reason):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=reason) as info:
        load_endovis_calibration(path)
    assert str(path) in str(info.value)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(DataError, match='not found'):
        load_endovis_calibration(tmp_path / 'nope.txt')
    binary = tmp_path / 'calib.bin'
    binary.write_bytes(b'\x89PNG\r\n\x1a\n\xff\xfe')
    with pytest.raises(DataError, match='binary'):
        load_endovis_calibration(binary)


def test_parse_reports_the_line_number():
    with pytest.raises(DataError, match=r'<mem>:3: Camera-0-F'):
        parse_endovis_calibration(CALIBRATION.replace('1060.50 1060.25', '1 2 3'), source='<mem>')
