import math

import cv2
import numpy as np
import pytest

from mffseg_ros.inference.instances import TIP_DTYPE, TIP_POINT_FIELDS, Tip, find_tips, tips_to_records

H, W = 128, 160
SHAFT, WRIST, CLASPERS = 1, 2, 3


def _canvas():
    return np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)


def draw_tool(type_map, parts_map, type_id, entry, tip, *, wrist=True, claspers=True, width=9):
    """A tool entering at `entry` (on the border) with its jaws centred on `tip`."""
    cv2.line(type_map, entry, tip, type_id, width)
    cv2.line(parts_map, entry, tip, SHAFT, width)
    if wrist:
        cv2.circle(type_map, tip, 8, type_id, -1)
        cv2.circle(parts_map, tip, 8, WRIST, -1)
    if claspers:
        cv2.circle(type_map, tip, 4, type_id, -1)
        cv2.circle(parts_map, tip, 4, CLASPERS, -1)


def test_tip_is_the_clasper_centroid():
    t, p = _canvas()
    draw_tool(t, p, 3, (0, 100), (70, 50))
    tips, instance_map = find_tips(t, p, min_area=20)
    assert len(tips) == 1
    tip = tips[0]
    assert (tip.instance_id, tip.type_id, tip.source, tip.score) == (1, 3, 'claspers', 1.0)
    assert tip.u == pytest.approx(70, abs=0.01) and tip.v == pytest.approx(50, abs=0.01)
    assert tip.area_px == int((t == 3).sum())
    assert all(math.isnan(c) for c in tip.xyz)
    assert instance_map.dtype == np.uint16
    np.testing.assert_array_equal(instance_map, (t == 3).astype(np.uint16))


def test_wrist_centroid_without_claspers_and_too_few_clasper_pixels():
    t, p = _canvas()
    draw_tool(t, p, 2, (W - 1, 20), (90, 60), claspers=False)
    p[60, 90] = CLASPERS  # a single noisy clasper pixel must not define the tip
    tip = find_tips(t, p, min_area=20, min_part_area=10)[0][0]
    assert tip.source == 'wrist'
    assert (tip.u, tip.v) == pytest.approx((90, 60), abs=0.3)


@pytest.mark.parametrize('entry, end', [((0, 100), (70, 50)), ((W - 1, 10), (60, 90)), ((80, H - 1), (80, 30))])
def test_shaft_only_tip_is_the_end_away_from_the_border(entry, end):
    t, p = _canvas()
    draw_tool(t, p, 6, entry, end, wrist=False, claspers=False)
    tip = find_tips(t, p, min_area=20)[0][0]
    assert tip.source == 'shaft_end'
    assert math.hypot(tip.u - end[0], tip.v - end[1]) < 3.0  # within half a shaft width of the drawn end


def test_instance_without_part_labels_uses_its_shape():
    t, p = _canvas()
    draw_tool(t, p, 1, (0, 64), (100, 64), wrist=False, claspers=False)
    p[:] = 255  # parts not annotated
    tip = find_tips(t, p, min_area=20)[0][0]
    assert tip.source == 'instance_end'
    assert tip.u == pytest.approx(100, abs=3) and tip.v == pytest.approx(64, abs=1)


def test_instances_are_ordered_by_type_then_area_and_small_blobs_dropped():
    t, p = _canvas()
    draw_tool(t, p, 6, (0, 10), (40, 30))  # type 6, shorter
    draw_tool(t, p, 6, (W - 1, 120), (60, 100))  # type 6, longer -> first of its type
    draw_tool(t, p, 4, (80, 0), (110, 50))  # type 4 -> first overall
    cv2.circle(t, (150, 60), 2, 5, -1)  # a 13-pixel blob of type 5: noise
    t[0:3, 150:153] = 255  # ignore label: never an instance
    tips, instance_map = find_tips(t, p, min_area=40)
    assert [(tip.instance_id, tip.type_id) for tip in tips] == [(1, 4), (2, 6), (3, 6)]
    assert tips[1].area_px > tips[2].area_px
    assert (tips[1].u, tips[1].v) == pytest.approx((60, 100), abs=0.01)
    for tip in tips:  # the instance map marks exactly each instance's pixels
        assert int((instance_map == tip.instance_id).sum()) == tip.area_px
        assert np.all(t[instance_map == tip.instance_id] == tip.type_id)
    assert instance_map.max() == 3 and not instance_map[t == 5].any()


def test_touching_tools_of_different_types_are_separate_instances():
    t, p = _canvas()
    draw_tool(t, p, 1, (0, 60), (80, 60))
    draw_tool(t, p, 2, (W - 1, 60), (81, 60), claspers=False)
    tips, _ = find_tips(t, p, min_area=20)
    assert [tip.type_id for tip in tips] == [1, 2]


def test_score_is_the_mean_confidence_over_the_instance():
    t, p = _canvas()
    draw_tool(t, p, 1, (0, 20), (50, 40))
    draw_tool(t, p, 2, (W - 1, 100), (100, 90))
    confidence = np.full((H, W), 0.1, np.float32)
    confidence[t == 1] = 0.8
    confidence[(t == 2) & (p == SHAFT)] = 0.5  # 0.5 on the shaft, 1.0 on wrist and claspers
    confidence[(t == 2) & (p != SHAFT)] = 1.0
    tips, _ = find_tips(t, p, min_area=20, confidence=confidence)
    assert tips[0].score == pytest.approx(0.8)
    shaft_share = ((t == 2) & (p == SHAFT)).sum() / (t == 2).sum()
    assert tips[1].score == pytest.approx(0.5 * shaft_share + 1.0 * (1 - shaft_share), rel=1e-5)


def test_deterministic_and_independent_of_drawing_order():
    tools = [(6, (0, 10), (40, 30)), (6, (W - 1, 120), (60, 100)), (4, (80, 0), (110, 50))]
    results = []
    for order in (tools, tools[::-1]):
        t, p = _canvas()
        for tool in order:
            draw_tool(t, p, *tool)
        results.append(find_tips(t, p, min_area=20))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_empty_frame_and_bad_shapes():
    t, p = _canvas()
    tips, instance_map = find_tips(t, p)
    assert tips == [] and instance_map.shape == (H, W) and not instance_map.any()
    with pytest.raises(ValueError, match='one shape'):
        find_tips(t, p[:10])
    with pytest.raises(ValueError, match='confidence'):
        find_tips(t, p, confidence=np.ones((2, 2)))


def test_tip_records_read_back_with_numpy_from_the_field_table():
    tips = [Tip(1, 3, 70.25, 50.5, 431, 0.75, 'claspers', (0.01, -0.02, 0.05)),
            Tip(2, 6, 10.0, 99.0, 120, 0.5, 'shaft_end')]
    payload = tips_to_records(tips).tobytes()
    assert len(payload) == 2 * 36 == 2 * TIP_DTYPE.itemsize
    # A consumer rebuilds the dtype from the PointCloud2 fields alone (PointField codes 7/4/2).
    codes = {7: '<f4', 4: '<u2', 2: 'u1'}
    dtype = np.dtype({'names': [f[0] for f in TIP_POINT_FIELDS], 'offsets': [f[1] for f in TIP_POINT_FIELDS],
                      'formats': [codes[f[2]] for f in TIP_POINT_FIELDS], 'itemsize': 36})
    points = np.frombuffer(payload, dtype)
    assert points['type_id'].tolist() == [3, 6] and points['instance_id'].tolist() == [1, 2]
    assert points['source'].tolist() == [3, 1]  # the part id that gave the tip
    np.testing.assert_allclose(points['x'][0], 0.01) and np.testing.assert_allclose(points['u'], [70.25, 10.0])
    assert np.isnan(points['z'][1]) and points['area_px'].tolist() == [431, 120]


def test_equal_areas_are_ordered_top_to_bottom_then_left_to_right():
    t, p = _canvas()
    for x, y in ((120, 90), (20, 90), (70, 10)):  # three identical 10x10 squares of one type
        t[y:y + 10, x:x + 10] = 7
    tips, instance_map = find_tips(t, p, min_area=50)
    assert [tip.area_px for tip in tips] == [100, 100, 100]
    assert instance_map[12, 72] == 1 and instance_map[92, 22] == 2 and instance_map[92, 122] == 3
