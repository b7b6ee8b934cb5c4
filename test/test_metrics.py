"""Metric values on hand-made masks; every expected number is worked out in the comments."""
import json
import math

import numpy as np
import pytest

from mffseg_ros.evaluation.metrics import TaskMeter, confusion_matrix, hausdorff_distance, score_image


def _square(shape, rows, cols, value=1):
    m = np.zeros(shape, np.uint8)
    m[rows[0]:rows[1], cols[0]:cols[1]] = value
    return m


def test_shifted_square_dice_iou_sensitivity_specificity_hausdorff():
    # 4x4 image: ground truth rows 0-1 x cols 0-1, prediction rows 0-1 x cols 1-2.
    # tp = 2 (col 1), fp = 2 (col 2), fn = 2 (col 0), tn = 16 - 6 = 10.
    gt = _square((4, 4), (0, 2), (0, 2))
    pred = _square((4, 4), (0, 2), (1, 3))
    s = score_image(gt, pred, 2)
    assert s.dice[1] == pytest.approx(2 * 2 / (2 * 2 + 2 + 2))   # 0.5
    assert s.iou[1] == pytest.approx(2 / 6)
    assert s.sensitivity[1] == pytest.approx(2 / 4)
    assert s.specificity[1] == pytest.approx(10 / 12)
    assert s.hausdorff[1] == pytest.approx(1.0)  # every pixel is one column from the other set
    assert math.isnan(s.hausdorff[0])  # background has no Hausdorff distance (documented)
    # Background: tp = 10, fp = 2 (gt 1 -> pred 0), fn = 2 -> Dice 20/24.
    assert s.dice[0] == pytest.approx(20 / 24)
    assert s.confusion.tolist() == [[10, 2], [2, 2]]
    # Paper averaging for one image: the foreground classes present in the ground truth (only 1).
    assert s.paper['iou'] == pytest.approx(1 / 3)
    assert s.paper['dice'] == pytest.approx(0.5)


def test_hausdorff_by_hand_and_empty_masks():
    a = np.zeros((4, 5), bool)
    b = np.zeros((4, 5), bool)
    a[0, 0] = True
    b[3, 4] = True
    assert hausdorff_distance(a, b) == pytest.approx(5.0)  # 3-4-5 triangle
    # Asymmetric sets: b2 = {(0,0), (0,4)}; a -> b2 is 0, b2 -> a is 4; symmetric = 4.
    b2 = np.zeros((4, 5), bool)
    b2[0, 0] = b2[0, 4] = True
    assert hausdorff_distance(a, b2) == pytest.approx(4.0)
    assert math.isnan(hausdorff_distance(np.zeros((4, 5), bool), np.zeros((4, 5), bool)))
    assert hausdorff_distance(a, np.zeros((4, 5), bool)) == pytest.approx(math.hypot(4, 5))
    assert hausdorff_distance(a, np.zeros((4, 5), bool), empty_distance=7) == 7.0


def test_hausdorff_is_exact_far_from_the_crop():
    # Sets in opposite corners of a larger image: the bounding-box crop must not change the answer.
    a = np.zeros((40, 60), bool)
    b = np.zeros((40, 60), bool)
    a[2:4, 3:5] = True
    b[30:33, 50:52] = True
    # Farthest pixel: b's (32, 51), whose nearest pixel of a is (3, 4).
    assert hausdorff_distance(a, b) == pytest.approx(math.hypot(32 - 3, 51 - 4))


def test_hausdorff_matches_brute_force_on_random_blobs():
    from scipy.spatial.distance import directed_hausdorff
    rng = np.random.default_rng(5)
    for _ in range(5):
        a = rng.random((30, 40)) > 0.97
        b = rng.random((30, 40)) > 0.9
        pa, pb = np.argwhere(a), np.argwhere(b)
        brute = max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0])
        assert hausdorff_distance(a, b) == pytest.approx(brute, abs=1e-3)


def test_empty_ground_truth_image():
    gt = np.zeros((4, 4), np.uint8)
    clean = score_image(gt, np.zeros((4, 4), np.uint8), 2)
    assert math.isnan(clean.dice[1]) and math.isnan(clean.iou[1]) and math.isnan(clean.hausdorff[1])
    assert math.isnan(clean.sensitivity[1])
    assert clean.specificity[1] == 1.0
    assert clean.paper['dice'] == 1.0 and clean.paper['iou'] == 1.0 and clean.paper['hausdorff'] == 0.0
    assert math.isnan(clean.paper['sensitivity'])

    false_alarm = score_image(gt, _square((4, 4), (0, 1), (0, 1)), 2)  # one false-positive pixel
    assert false_alarm.dice[1] == 0.0 and false_alarm.iou[1] == 0.0
    assert false_alarm.hausdorff[1] == pytest.approx(math.hypot(4, 4))
    assert false_alarm.specificity[1] == pytest.approx(15 / 16)
    assert false_alarm.paper == pytest.approx({'dice': 0.0, 'iou': 0.0, 'hausdorff': math.hypot(4, 4),
                                               'sensitivity': math.nan, 'specificity': 15 / 16},
                                              nan_ok=True)


def test_missed_instrument_scores_zero_and_diagonal():
    gt = _square((4, 4), (1, 3), (1, 3))
    s = score_image(gt, np.zeros((4, 4), np.uint8), 2)
    assert s.dice[1] == 0.0 and s.iou[1] == 0.0 and s.sensitivity[1] == 0.0
    assert s.hausdorff[1] == pytest.approx(math.hypot(4, 4))
    assert s.specificity[1] == 1.0  # nothing predicted, so no false positives


def test_ignore_label_255_is_dropped_everywhere():
    gt = _square((4, 4), (0, 2), (0, 2))
    gt[3, :] = 255  # not annotated
    pred = _square((4, 4), (0, 2), (0, 2))
    pred[3, :] = 1  # predictions there must not count as false positives
    s = score_image(gt, pred, 2)
    assert s.dice[1] == 1.0 and s.iou[1] == 1.0 and s.hausdorff[1] == 0.0
    assert s.specificity[1] == 1.0
    assert s.confusion.sum() == 12


def test_multiclass_paper_averaging_uses_classes_present_in_ground_truth():
    # Classes 1 (4 px) and 2 (4 px) in the ground truth; the prediction gets 1 right,
    # calls class 2 "3": IoU(1) = 1, IoU(2) = 0, IoU(3) = 0 (false positive only).
    gt = _square((4, 4), (0, 2), (0, 2), 1) + _square((4, 4), (2, 4), (2, 4), 2)
    pred = _square((4, 4), (0, 2), (0, 2), 1) + _square((4, 4), (2, 4), (2, 4), 3)
    s = score_image(gt, pred, 4)
    assert s.iou[1:].tolist() == [1.0, 0.0, 0.0]
    assert s.paper['iou'] == pytest.approx(0.5)  # mean over classes 1 and 2 only
    meter = TaskMeter('parts', ('background', 'shaft', 'wrist', 'claspers'))
    meter.add(gt, pred)
    summary = meter.summary()
    assert summary['mean']['iou'] == pytest.approx(1 / 3)  # classes 1, 2, 3 each scored
    assert summary['paper']['iou'] == pytest.approx(0.5)


def test_dataset_iou_differs_from_per_image_average():
    # Image A: 8-pixel instrument found exactly (IoU 1). Image B: 2-pixel instrument missed (IoU 0).
    # Paper (per image) = 0.5; data-set confusion IoU = 8 / (8 + 2) = 0.8.
    meter = TaskMeter('binary', ('background', 'instrument'))
    gt_a = _square((4, 4), (0, 2), (0, 4))
    meter.add(gt_a, gt_a, 'a')
    meter.add(_square((4, 4), (0, 1), (0, 2)), np.zeros((4, 4), np.uint8), 'b')
    assert meter.add(np.full((4, 4), 255, np.uint8), np.zeros((4, 4), np.uint8)) is None  # unlabelled
    s = meter.summary()
    assert s['images'] == 2
    assert s['paper']['iou'] == pytest.approx(0.5)
    assert s['dataset']['iou']['instrument'] == pytest.approx(0.8)
    assert s['dataset']['mean_iou'] == pytest.approx(0.8)
    assert s['per_class']['instrument']['images'] == 2
    json.dumps(s, allow_nan=False)  # NaN must have become null


def test_class_absent_everywhere_is_null_in_json():
    meter = TaskMeter('binary', ('background', 'instrument'))
    meter.add(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))
    s = meter.summary()
    assert s['per_class']['instrument']['iou'] is None
    assert s['dataset']['iou']['instrument'] is None
    assert s['paper']['iou'] == 1.0
    json.dumps(s, allow_nan=False)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match='shape'):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match='outside'):
        confusion_matrix(np.zeros((2, 2), np.uint8), np.full((2, 2), 5, np.uint8), 2)
