"""The instrument-level post-processing on exact label maps (no network): one instance per instrument
whatever the per-pixel types, voted types, tips, splitting of crossing and touching instruments,
tracking, type-free stereo with shaft axes, and the published records. The node's DDS plumbing is
checked in test_node.py."""
import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
from std_msgs.msg import Header

from mffseg_ros.inference.instruments import UNKNOWN_TYPE, find_instruments, instrument_tip, jaw_parts
from mffseg_ros.inference.perception import InstrumentPerception, PerceptionConfig
from mffseg_ros.inference.results import SegmentationResult
from mffseg_ros.inference.stereo import StereoCalibration, pixel_rectifier
from mffseg_ros.inference.tip_records import TIP_DTYPE, axis_quaternion, rotate_x_axis
from mffseg_ros.model.classes import PART_CLASPERS, PART_SHAFT, PART_WRIST
from mffseg_ros.ros import conversions

H, W = 192, 256
F, BASELINE = 250.0, 0.005  # px, m: a 5 mm stereo endoscope
K = np.array([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1]])
P_LEFT = np.hstack([K, np.zeros((3, 1))])
P_RIGHT = np.hstack([K, K @ np.array([[-BASELINE], [0], [0]])])
SHIFT = 4  # cv2 fixed-point bits: draw at sub-pixel positions
CONFIG = PerceptionConfig(min_instance_area=30)


def project(P, xyz):
    p = P @ np.append(xyz, 1.0)
    return p[:2] / p[2]


def _pt(uv):
    return tuple(round(c * (1 << SHIFT)) for c in uv)


def draw_instrument(type_map, parts_map, type_id, tip_uv, toward_uv, parts=('shaft', 'wrist', 'claspers'),
                    width=9):
    """A shaft from `toward_uv` (at the border) to the wrist, a wrist disk and a clasper disk centred
    exactly on `tip_uv` (drawn last, so its centroid is the tip)."""
    tip_uv, toward_uv = np.asarray(tip_uv, float), np.asarray(toward_uv, float)
    direction = (toward_uv - tip_uv) / np.linalg.norm(toward_uv - tip_uv)
    wrist_uv = tip_uv + 9 * direction
    layers = {
        'shaft': (PART_SHAFT, lambda img, v: cv2.line(img, _pt(wrist_uv), _pt(toward_uv), v, width, cv2.LINE_8,
                                                      SHIFT)),
        'wrist': (PART_WRIST, lambda img, v: cv2.circle(img, _pt(wrist_uv), 5 << SHIFT, v, -1, cv2.LINE_8, SHIFT)),
        'claspers': (PART_CLASPERS, lambda img, v: cv2.circle(img, _pt(tip_uv), 4 << SHIFT, v, -1, cv2.LINE_8,
                                                              SHIFT)),
    }
    for name in ('shaft', 'wrist', 'claspers'):
        if name in parts:
            part_id, draw = layers[name]
            draw(type_map, int(type_id))
            draw(parts_map, int(part_id))


def blank():
    return np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)


def result(type_map, parts_map):
    return SegmentationResult.from_labels(parts_map, type_map)


def process(type_map, parts_map, config=CONFIG):
    return InstrumentPerception(config).process(result(type_map, parts_map))


def test_tips_are_the_clasper_centroids_and_types_are_voted():
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 3, (80.3, 70.6), (0, 20))
    draw_instrument(type_map, parts_map, 6, (170.2, 120.4), (W - 1, H - 1))
    frame = process(type_map, parts_map)
    tips = {i.type_id: i for i in frame.instruments}
    assert sorted(tips) == [3, 6]
    assert tips[3].tip == pytest.approx((80.3, 70.6), abs=0.3) and tips[3].source == 'claspers'
    assert tips[6].tip == pytest.approx((170.2, 120.4), abs=0.3)
    assert tips[3].type_score == pytest.approx(1.0)


def test_a_shuffled_type_map_still_gives_one_instance_per_instrument():
    """Per-pixel type noise (a checkerboard of types) must not shatter an instrument: instances come
    from the instrument mask, the type from the vote."""
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 3, (80, 70), (0, 20))
    draw_instrument(type_map, parts_map, 6, (170, 120), (W - 1, H - 1))
    rng = np.random.default_rng(0)
    noisy = np.where(type_map > 0, rng.integers(1, 8, type_map.shape), 0).astype(np.uint8)
    frame = process(noisy, parts_map)
    assert len(frame.instruments) == 2
    assert all(i.type_score < 0.3 for i in frame.instruments)  # a vote over 7 random types is weak
    assert all(i.type_id == UNKNOWN_TYPE for i in frame.instruments)  # ... so it is not guessed
    assert sorted(np.unique(frame.labels_image())) == [0, UNKNOWN_TYPE]
    pixel = InstrumentPerception(PerceptionConfig(min_instance_area=30, labels_mode='pixel')).process(
        result(noisy, parts_map))
    assert len(np.unique(pixel.labels_image())) == 8  # raw per-pixel types on request


def test_a_region_the_model_half_believes_in_is_no_instrument():
    """Mean P(instrument) below min_instrument_score (tissue the model takes for metal at 0.6): dropped,
    from the instruments and the instance map; a lower threshold keeps it."""
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 3, (80, 60), (0, 20))
    draw_instrument(type_map, parts_map, 5, (170, 120), (W - 1, H - 1))
    faint = result(type_map, parts_map)
    faint.foreground[type_map == 5] = 0.6  # still above 0.5: in the instrument mask
    frame = InstrumentPerception(CONFIG).process(faint)
    assert [i.type_id for i in frame.instruments] == [3] and frame.instruments[0].score == 1.0
    assert set(np.unique(frame.instance_ids_image())) == {0, frame.instruments[0].track_id}
    kept = InstrumentPerception(replace(CONFIG, min_instrument_score=0.5)).process(faint)
    assert sorted(i.type_id for i in kept.instruments) == [3, 5]


def test_a_mostly_right_vote_wins():
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 4, (120, 90), (0, 10))
    rng = np.random.default_rng(1)
    noisy = np.where((type_map > 0) & (rng.random(type_map.shape) < 0.3), 2, type_map).astype(np.uint8)
    (inst,) = process(noisy, parts_map).instruments
    assert inst.type_id == 4 and 0.6 < inst.type_score < 0.8


def test_the_vote_is_the_mean_over_the_instrument_and_skips_pixels_without_a_number():
    """type_votes: the mean P(type | instrument) over the instrument's pixels, by type; where a network
    gives NaN on some pixels, the mean of the others (the vote is not lost)."""
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 4, (120, 90), (0, 10))
    res = result(type_map, parts_map)
    inside = res.foreground > 0.5
    rng = np.random.default_rng(3)
    res.type_probs[:, inside] = rng.dirichlet(np.ones(7), inside.sum()).T.astype(np.float32)
    expected = res.type_probs[:, inside].astype(np.float64).mean(axis=1)
    (found,), _ = find_instruments(res)
    np.testing.assert_allclose(found.type_votes, expected, rtol=1e-6)
    ys, xs = np.nonzero(inside)
    res.type_probs[:, ys[:50], xs[:50]] = np.nan
    (found,), _ = find_instruments(res)
    np.testing.assert_allclose(found.type_votes, res.type_probs[:, ys[50:], xs[50:]].astype(np.float64).mean(axis=1),
                               rtol=1e-6)


def test_crossing_instruments_stay_two_instances():
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 1, (200, 40), (0, H - 1), width=11)  # bottom-left -> top-right
    draw_instrument(type_map, parts_map, 2, (60, 40), (W - 1, H - 1), width=11)  # bottom-right -> top-left
    frame = process(type_map, parts_map)
    assert len(frame.instruments) == 2
    got = sorted((round(i.tip[0]), round(i.tip[1])) for i in frame.instruments)
    assert np.allclose(got, [(60, 40), (200, 40)], atol=1.5)
    for inst in frame.instruments:  # each instance holds its own claspers, and far shaft pixels of its own
        ids = frame.instance_ids_image()
        assert ids[int(round(inst.tip[1])), int(round(inst.tip[0]))] == inst.track_id
    ids = frame.instance_ids_image()
    tip_of = {round(i.tip[0]): i.track_id for i in frame.instruments}
    assert ids[H - 8, 8] == tip_of[200] and ids[H - 8, W - 8] == tip_of[60]


def draw_banded(type_map, parts_map, type_id, border_uv, tip_uv, layers, width=12):
    """An instrument as consecutive rectangles along the line from `border_uv` to `tip_uv`: `layers` is
    [(part, length px, width px or None = `width`)] from the tip backwards; the shaft fills the rest."""
    border_uv, tip_uv = np.asarray(border_uv, float), np.asarray(tip_uv, float)
    back = (border_uv - tip_uv) / np.linalg.norm(border_uv - tip_uv)
    across = np.array([-back[1], back[0]])
    start = tip_uv
    for part, length, band_width in [*layers, (PART_SHAFT, np.linalg.norm(border_uv - tip_uv), None)]:
        end = start + length * back
        half = 0.5 * (band_width or width) * across
        corners = np.array([_pt(c) for c in (start - half, start + half, end + half, end - half)], np.int32)
        for img, value in ((type_map, type_id), (parts_map, part)):
            cv2.fillConvexPoly(img, corners, int(value), cv2.LINE_8, SHIFT)
        start = end


def jaws_centre(parts_map, type_map, type_id):
    ys, xs = np.nonzero((parts_map == PART_CLASPERS) & (type_map == type_id))
    return xs.mean(), ys.mean()


def test_crossing_instruments_whose_wrists_nearly_touch_stay_two_instances():
    """One tool comes down from the top, the other from the top right, crossing its shaft just above
    its wrist: the two heads are 5.5 px apart (closer than half a head's size, the gap under which head
    pieces count as one head), but each lies along its own axis, 55 degrees apart."""
    type_map, parts_map = blank()
    head = [(PART_CLASPERS, 14, 8), (PART_WRIST, 24, None)]
    draw_banded(type_map, parts_map, 1, (128, 0), (128, 160), head)
    angle = np.radians(35)
    tip = np.array([94.0, 128.0])
    draw_banded(type_map, parts_map, 2, tip + 300 * np.array([np.cos(angle), -np.sin(angle)]), tip, head)
    frame = process(type_map, parts_map)
    assert len(frame.instruments) == 2
    ids = frame.instance_ids_image()
    for inst in frame.instruments:  # each tip on its own jaws, in its own instance, with its own type
        assert inst.tip == pytest.approx(jaws_centre(parts_map, type_map, inst.type_id), abs=1.0)
        assert ids[int(round(inst.tip[1])), int(round(inst.tip[0]))] == inst.track_id
        assert inst.type_score > 0.8
    assert sorted(i.type_id for i in frame.instruments) == [1, 2]


def test_one_head_broken_in_two_pieces_along_its_axis_stays_one_instrument():
    """A highlight labelled shaft cuts the wrist in two bands 6 px apart (wider than the gaps bridged):
    two head pieces on one axis are one head, not two instruments."""
    type_map, parts_map = blank()
    draw_banded(type_map, parts_map, 4, (0, 170), (190, 60),
                [(PART_CLASPERS, 20, 8), (PART_WRIST, 16, None), (PART_SHAFT, 6, None), (PART_WRIST, 28, None)],
                width=10)
    heads = cv2.morphologyEx((parts_map >= PART_WRIST).astype(np.uint8), cv2.MORPH_CLOSE,
                             cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    assert cv2.connectedComponents(heads)[0] == 3  # background + two head pieces
    (inst,) = process(type_map, parts_map).instruments
    assert inst.source == 'claspers' and inst.tip == pytest.approx(jaws_centre(parts_map, type_map, 4), abs=1.0)


def test_head_pieces_on_the_only_shaft_line_are_one_instrument():
    """Pale jaws whose base the model takes for shaft (synthetic bags): wrist and jaws are two head
    pieces far apart, on the line of the one shaft that comes in from the border: one instrument, its
    tip on the jaws (all that lies beyond the wrist). A second tool's head off that line stays an
    instrument of its own."""
    type_map, parts_map = blank()
    draw_banded(type_map, parts_map, 4, (0, 170), (190, 60),
                [(PART_CLASPERS, 20, 8), (PART_SHAFT, 24, None), (PART_WRIST, 24, None)], width=12)
    (inst,) = process(type_map, parts_map).instruments
    jaws = jaw_parts(parts_map > 0, parts_map) == PART_CLASPERS  # the jaws: all beyond the wrist
    ys, xs = np.nonzero(jaws)
    assert inst.source == 'claspers' and inst.tip == pytest.approx((xs.mean(), ys.mean()), abs=1.0)
    # A second tool from the top whose short shaft is no piece of its own (under a fifth of the long one)
    # and whose head rests on the long shaft, across it: its own instrument.
    type_map, parts_map = blank()
    head = [(PART_CLASPERS, 14, 8), (PART_WRIST, 24, None)]
    draw_banded(type_map, parts_map, 1, (0, 45), (200, 45), head)
    draw_banded(type_map, parts_map, 2, (100, 0), (100, 60), head)
    assert len(process(type_map, parts_map).instruments) == 2


def test_a_tool_seen_mostly_as_its_jaws_stays_one_instrument():
    """A real laparoscopic grasper (VID03): long jaws, nearly all of it labelled claspers, a shaft stub
    where it comes in across the field stop (not the image border) and a strip of the jaws taken for
    shaft. Two shaft pieces, one head larger than both: one instrument, not one per shaft piece."""
    type_map, parts_map = blank()
    for part, start, end in ((PART_SHAFT, (20, 150), (45, 135)), (PART_CLASPERS, (45, 135), (200, 40))):
        cv2.line(type_map, start, end, 1, 12)
        cv2.line(parts_map, start, end, part, 12)
    cv2.line(parts_map, (110, 95), (140, 77), PART_SHAFT, 5)  # along the jaws' axis, mid-way
    (inst,) = process(type_map, parts_map).instruments
    assert inst.source == 'claspers'
    # Two tools meeting at one's head, the other's head hidden: their shafts are long bands, larger than
    # the one head, and still split the region.
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 1, (150, 110), (0, 60))
    draw_instrument(type_map, parts_map, 2, (155, 100), (60, H - 1), parts=('shaft',))  # its end at the jaws
    assert cv2.connectedComponents((parts_map > 0).view(np.uint8))[0] == 2  # one region
    assert len(process(type_map, parts_map).instruments) == 2


def test_instruments_touching_at_the_jaws_stay_two_instances():
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 1, (120, 96), (0, 96))
    draw_instrument(type_map, parts_map, 5, (128, 96), (W - 1, 96))  # jaws overlap head on
    frame = process(type_map, parts_map)
    assert len(frame.instruments) == 2
    ids = frame.instance_ids_image()
    left, right = sorted(frame.instruments, key=lambda i: i.tip[0])
    assert ids[96, 10] == left.track_id and ids[96, W - 10] == right.track_id
    assert left.tip[0] < right.tip[0] and abs(left.tip[0] - 120) < 4 and abs(right.tip[0] - 128) < 4


def test_tip_falls_back_to_the_wrist_then_the_shaft_end_away_from_the_border():
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 2, (100, 100), (0, 100), parts=('shaft', 'wrist'))
    (inst,) = process(type_map, parts_map).instruments
    assert inst.source == 'wrist' and inst.tip == pytest.approx((91, 100), abs=0.6)
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 2, (100, 100), (W - 1, 100), parts=('shaft',))
    (inst,) = process(type_map, parts_map).instruments
    assert inst.source == 'shaft_end' and abs(inst.tip[0] - 109) < 4  # the distal end, not the border end


def test_the_tip_of_open_jaws_lies_on_the_jaws():
    """Two clasper prongs in a V: their centroid is between them; the tip moves onto a clasper pixel."""
    parts = np.zeros((60, 60), np.uint8)
    cv2.line(parts, (0, 30), (20, 30), PART_SHAFT, 5)
    cv2.line(parts, (20, 30), (40, 15), PART_CLASPERS, 3)
    cv2.line(parts, (20, 30), (40, 45), PART_CLASPERS, 3)
    u, v, source = instrument_tip(parts > 0, parts)
    assert source == 'claspers' and parts[int(v), int(u)] == PART_CLASPERS


def test_tracks_keep_ids_while_moving_and_retire_after_missed_frames():
    perception = InstrumentPerception(PerceptionConfig(min_instance_area=30, track_max_missed=2))
    ids = []
    for step in range(8):
        type_map, parts_map = blank()
        draw_instrument(type_map, parts_map, 3, (60 + 6 * step, 60), (0, 20))
        draw_instrument(type_map, parts_map, 6, (180 - 5 * step, 130), (W - 1, H - 1))
        frame = perception.process(result(type_map, parts_map))
        ids.append(sorted((i.type_id, i.track_id) for i in frame.instruments))
    assert all(f == ids[0] for f in ids) and len({t for _, t in ids[0]}) == 2
    empty = blank()
    for _ in range(3):  # more than track_max_missed frames without instruments: ids retire
        perception.process(result(*empty))
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 3, (60, 60), (0, 20))
    (inst,) = perception.process(result(type_map, parts_map)).instruments
    assert inst.track_id not in {t for _, t in ids[0]}


def test_with_track_min_frames_a_one_frame_speck_never_gets_an_id():
    perception = InstrumentPerception(PerceptionConfig(min_instance_area=30, track_min_frames=2))

    def frame(step, speck=False, second=False):
        type_map, parts_map = blank()
        draw_instrument(type_map, parts_map, 3, (60 + 6 * step, 60), (0, 20))
        if speck or second:
            draw_instrument(type_map, parts_map, 6, (180, 130), (W - 1, H - 1))
        return perception.process(result(type_map, parts_map))

    first = frame(0)  # the first frame's instruments are published at once: no history to doubt them
    assert [i.track_id for i in first.instruments] == [1]
    speck = frame(1, speck=True)  # a second instrument for one frame only: tentative, not published
    assert [i.track_id for i in speck.instruments] == [1]
    assert set(np.unique(speck.instance_ids_image())) == {0, 1}  # nor painted in any image
    assert [i.track_id for i in frame(2).instruments] == [1]
    late = [frame(3 + k, second=True).instruments for k in range(3)]  # one that stays: published from its 2nd frame
    assert [[i.track_id for i in f] for f in late] == [[1], [1, 2], [1, 2]]  # ids stay consecutive
    assert late[1][1].colour != late[1][0].colour
    # Raised at run time (the node's parameter): tracks restart, the next frame is a first frame again.
    perception.reconfigure(replace(perception.config, track_min_frames=3))
    assert [i.track_id for i in frame(6).instruments] == [3]
    assert [[i.track_id for i in frame(7 + k, speck=k < 2).instruments] for k in range(3)] == [[3], [3], [3]]
    assert [[i.track_id for i in frame(10 + k, second=True).instruments] for k in range(3)] == [[3], [3], [3, 4]]


def test_max_instruments_publishes_the_most_believed_tracks():
    """Two of three regions published: the two whose tracks the model believes in most (mean score over
    their lives), not the first seen nor the largest; the choice holds from frame to frame."""
    perception = InstrumentPerception(PerceptionConfig(min_instance_area=30, max_instruments=2))

    def frame(third=False, doubted=0.7):
        type_map, parts_map = blank()
        draw_instrument(type_map, parts_map, 3, (60, 60), (0, 20))
        draw_instrument(type_map, parts_map, 6, (180, 130), (W - 1, H - 1), width=15)  # the largest region
        if third:
            draw_instrument(type_map, parts_map, 1, (120, 40), (W - 1, 0))
        seen = result(type_map, parts_map)
        seen.foreground[type_map == 6] = doubted  # tissue the model takes for metal, seen from the start
        return perception.process(seen)

    first = frame().instruments  # ids go largest first: the doubted region is track 1
    assert [(i.track_id, i.type_id) for i in first] == [(1, 6), (2, 3)]
    for _ in range(3):  # a third, fully believed instrument comes and stays: it replaces the doubted one
        shown = frame(third=True)
        assert [(i.track_id, i.type_id) for i in shown.instruments] == [(2, 3), (3, 1)]
        assert set(np.unique(shown.instance_ids_image())) == {0, 2, 3}  # nor is the doubted one painted
    assert len(find_instruments(shown.result, min_area=30)[0]) == 3  # found, only not published
    # A frame in which the doubted region scores higher does not swap them back: its mean stays lower.
    assert [i.track_id for i in frame(third=True, doubted=0.99).instruments] == [2, 3]
    # The limit is a run-time parameter: tracks are kept, and 0 publishes every instrument.
    perception.reconfigure(replace(perception.config, max_instruments=0))
    assert [i.track_id for i in frame(third=True).instruments] == [1, 2, 3]


def test_tip_smoothing_reduces_jitter_of_a_still_tool():
    def run(smoothing):
        perception = InstrumentPerception(PerceptionConfig(min_instance_area=30, smoothing=smoothing,
                                                           smoothing_min_cutoff=0.5))
        rng = np.random.default_rng(3)
        tips = []
        for k in range(20):
            type_map, parts_map = blank()
            draw_instrument(type_map, parts_map, 3, (100 + rng.normal(0, 1.5), 80 + rng.normal(0, 1.5)), (0, 20))
            (inst,) = perception.process(result(type_map, parts_map), stamp=k * 0.1).instruments
            tips.append(inst.tip)
        return np.std(np.array(tips)[5:], axis=0).mean()
    assert run(True) < 0.6 * run(False)


def stereo_label_maps(truth):
    """{side: (type map, parts map)} of instruments (type id, tip xyz, border pixel) seen by both cameras."""
    maps = {}
    for side, P in (('left', P_LEFT), ('right', P_RIGHT)):
        type_map, parts_map = blank()
        for type_id, xyz, border in truth:
            draw_instrument(type_map, parts_map, type_id, project(P, np.asarray(xyz)), border)
        maps[side] = type_map, parts_map
    return maps


def stereo_results(truth):
    return {side: result(*maps) for side, maps in stereo_label_maps(truth).items()}


def test_3d_tips_and_shaft_axes_from_projected_stereo_without_types():
    truth = [(3, np.array([-0.012, -0.004, 0.07]), (0, 0)),
             (5, np.array([0.010, 0.006, 0.09]), (W - 1, H - 1))]
    maps = stereo_results(truth)
    # The right eye's types are all different: matching must not need them.
    maps['right'].net_type[maps['right'].net_type > 0] = 7
    frame = InstrumentPerception(CONFIG).process(maps['left'], maps['right'], StereoCalibration(P_LEFT, P_RIGHT))
    assert frame.stereo_error is None
    got = {i.type_id: i for i in frame.instruments}
    for type_id, xyz, border in truth:
        inst = got[type_id]
        assert np.linalg.norm(np.asarray(inst.xyz) - xyz) < 0.002, (inst.xyz, xyz)
        assert inst.axis_xyz is not None
        # The shaft runs from the border pixel towards the tip; its 3-D axis points to the tip.
        image_dir = project(P_LEFT, xyz) - np.asarray(border, float)
        reprojected = project(P_LEFT, xyz) - project(P_LEFT, xyz - 0.01 * np.asarray(inst.axis_xyz))
        cos = image_dir @ reprojected / (np.linalg.norm(image_dir) * np.linalg.norm(reprojected))
        assert cos > 0.98


def stereo_images(on_tool, disparity, tissue_disparity, seed):
    """(left, right) RGB images of a textured tool (the left eye's `on_tool` pixels) over textured tissue:
    in the right eye the tool lies `disparity` px to the left, the tissue behind it `tissue_disparity`."""
    rng = np.random.default_rng(seed)
    tool, tissue = (cv2.GaussianBlur(rng.uniform(0, 255, (H, W + 40, 3)).astype(np.float32), (0, 0), blur)
                    .astype(np.uint8) for blur in (1.5, 3.0))
    left = np.where(on_tool[..., None], tool[:, :W], tissue[:, :W])
    right = np.where(np.roll(on_tool, -disparity, axis=1)[..., None], tool[:, disparity:W + disparity],
                     tissue[:, tissue_disparity:W + tissue_disparity])
    return left, right


def test_3d_tips_are_refined_on_the_images_when_the_eyes_place_their_tips_apart():
    """The right eye's tip found 2 px off (as a segmentation error would): triangulated from the two
    tips, the tip is millimetres too far; with the frames in the results (the Segmenter puts them
    there), the disparity at the tip comes from the images and the tip is put back."""
    xyz = np.array([0.004, -0.002, F * BASELINE / 20.0])  # 20 px of disparity: 62.5 mm away
    left_uv, right_uv = project(P_LEFT, xyz), project(P_RIGHT, xyz)
    assert left_uv[0] - right_uv[0] == pytest.approx(20.0)
    maps = {}
    for side, uv in (('left', left_uv), ('right', right_uv + (2.0, 0.0))):
        type_map, parts_map = blank()
        draw_instrument(type_map, parts_map, 3, uv, (0, 30))
        maps[side] = result(type_map, parts_map)
    images = stereo_images(maps['left'].foreground > 0, 20, 12, seed=5)
    calibration = StereoCalibration(P_LEFT, P_RIGHT)
    (from_tips,) = InstrumentPerception(CONFIG).process(maps['left'], maps['right'], calibration).instruments
    assert np.linalg.norm(np.asarray(from_tips.xyz) - xyz) > 0.005
    maps['left'].image, maps['right'].image = images
    (from_images,) = InstrumentPerception(CONFIG).process(maps['left'], maps['right'], calibration).instruments
    assert np.linalg.norm(np.asarray(from_images.xyz) - xyz) < 0.0005
    assert from_images.tip == from_tips.tip  # the 2-D tip is the left eye's, as before


def test_an_instrument_whose_eyes_disagree_on_its_tip_is_matched_by_its_masks_and_images():
    """The right eye takes a patch of the shaft for the claspers: its tip lies 40 px up the shaft, far
    off the left tip's epipolar line, so the tips cannot be paired. The masks still agree along the rows
    and the images confirm the disparity at the left tip: the instrument gets its 3-D tip."""
    xyz = np.array([0.002, 0.004, F * BASELINE / 24.0])  # 24 px of disparity
    left_uv, right_uv = project(P_LEFT, xyz), project(P_RIGHT, xyz)
    maps = {}
    for side, uv in (('left', left_uv), ('right', right_uv)):
        type_map, parts_map = blank()
        draw_instrument(type_map, parts_map, 3, uv, (uv[0] - 12, 0))
        if side == 'right':  # the claspers called wrist, a larger patch of the shaft called claspers
            parts_map[parts_map == PART_CLASPERS] = PART_WRIST
            cv2.circle(parts_map, (round(uv[0] - 5), round(uv[1] - 40)), 5, PART_CLASPERS, -1)
            parts_map[type_map == 0] = 0
        maps[side] = result(type_map, parts_map)
    maps['left'].image, maps['right'].image = stereo_images(maps['left'].foreground > 0, 24, 10, seed=8)
    calibration = StereoCalibration(P_LEFT, P_RIGHT)
    (inst,) = InstrumentPerception(CONFIG).process(maps['left'], maps['right'], calibration).instruments
    assert np.linalg.norm(np.asarray(inst.xyz) - xyz) < 0.0005
    assert inst.axis_xyz is not None
    # Without the images nothing confirms the pair: no 3-D rather than a guess.
    maps['right'].image = None
    (blind,) = InstrumentPerception(CONFIG).process(maps['left'], maps['right'], calibration).instruments
    assert np.isnan(blind.xyz).all()


def test_begin_gives_the_2d_outputs_and_finish_the_same_frame_as_process():
    truth = [(3, np.array([-0.012, -0.004, 0.07]), (0, 0)),
             (5, np.array([0.010, 0.006, 0.09]), (W - 1, H - 1))]
    maps = stereo_results(truth)
    calibration = StereoCalibration(P_LEFT, P_RIGHT)
    whole = InstrumentPerception(CONFIG).process(maps['left'], maps['right'], calibration, stamp=0.0)
    for images_first in (True, False):
        perception = InstrumentPerception(CONFIG)
        frame = perception.begin(maps['left'], maps['right'], calibration, stamp=0.0, images_first=images_first)
        # 2-D now: the same instruments, images and tips, no 3-D yet.
        assert [(i.track_id, i.tip) for i in frame.instruments] == [(i.track_id, i.tip) for i in whole.instruments]
        assert all(np.isnan(i.xyz).all() and i.axis_xyz is None for i in frame.instruments)
        assert np.array_equal(frame.instance_ids_image(), whole.instance_ids_image())
        frame = perception.finish(frame)
        assert frame.stereo_error is None and frame.instruments == whole.instruments
        assert all(np.isfinite(i.xyz).all() for i in frame.instruments)
        assert perception.finish(frame) is frame and frame.instruments == whole.instruments  # finished once
    mono = InstrumentPerception(CONFIG).begin(maps['left'])
    assert InstrumentPerception(CONFIG).finish(mono).instruments == mono.instruments


def test_maps_prepared_on_the_second_thread_give_the_same_images():
    """begin(prepare=...) makes the outline and the parts at the input resolution while the left eye is
    searched; the images are those made on demand. An unknown map is refused at once."""
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 3, (80, 60), (0, 20))
    draw_instrument(type_map, parts_map, 5, (170, 120), (W - 1, H - 1))

    def fresh():  # network grid at half the input resolution: the images are upsampled
        return SegmentationResult.from_labels(parts_map, type_map, size=(2 * H, 2 * W))

    plain = InstrumentPerception(CONFIG).begin(fresh())
    ready = InstrumentPerception(CONFIG).begin(fresh(), prepare=('parts', 'outline'))
    for image in ('labels_image', 'instance_ids_image', 'parts_image'):
        a, b = getattr(plain, image)(), getattr(ready, image)()
        assert a.shape == (2 * H, 2 * W) and a.any() and np.array_equal(a, b), image
    with pytest.raises(ValueError, match='cannot prepare'):
        InstrumentPerception(CONFIG).begin(fresh(), prepare=('overlay',))


def test_a_search_made_ahead_gives_the_frame_begin_would_give():
    """search() (run while the right eye is in the network) then begin(searched=...): the same frame as
    begin alone; a search with other limits (parameters changed meanwhile) or of another result is redone."""
    truth = [(3, np.array([-0.012, -0.004, 0.07]), (0, 0)),
             (5, np.array([0.010, 0.006, 0.09]), (W - 1, H - 1))]
    maps = stereo_results(truth)
    calibration = StereoCalibration(P_LEFT, P_RIGHT)
    whole = InstrumentPerception(CONFIG).process(maps['left'], maps['right'], calibration, stamp=0.0)
    perception = InstrumentPerception(CONFIG)
    searched = perception.search(maps['left'], prepare=('outline',))
    frame = perception.finish(perception.begin(maps['left'], maps['right'], calibration, stamp=0.0,
                                               images_first=True, searched=searched))
    assert frame.instruments == whole.instruments
    assert np.array_equal(frame.instance_ids_image(), whole.instance_ids_image())
    # Parameters changed between the search and begin: the search is redone with the new limits.
    stale = perception.search(maps['left'])
    perception.reconfigure(replace(CONFIG, min_instance_area=10 ** 6))
    assert perception.begin(maps['left'], searched=stale).instruments == []
    fresh = InstrumentPerception(CONFIG)
    other = fresh.search(maps['right'])
    tips = [i.tip for i in fresh.begin(maps['left'], searched=other).instruments]
    assert tips == [i.tip for i in whole.instruments]  # the left eye's tips, not the right eye's


def test_a_disparity_outside_the_depth_range_is_not_matched():
    maps = stereo_results([(3, np.array([0.0, 0.0, 0.08]), (0, 0))])
    near = InstrumentPerception(PerceptionConfig(min_instance_area=30, max_depth=0.05))
    frame = near.process(maps['left'], maps['right'], StereoCalibration(P_LEFT, P_RIGHT))
    assert np.isnan(frame.instruments[0].xyz).all()
    assert StereoCalibration(P_LEFT, P_RIGHT).disparity_range(0.05, 0.1) == pytest.approx(
        (F * BASELINE / 0.1, F * BASELINE / 0.05))


def test_records_poses_and_markers_read_back_with_numpy_only():
    maps = stereo_results([(2, np.array([0.003, 0.002, 0.06]), (0, H - 1))])
    frame = InstrumentPerception(CONFIG).process(maps['left'], maps['right'], StereoCalibration(P_LEFT, P_RIGHT))
    (inst,) = frame.instruments
    header = Header(frame_id='left_optical')
    cloud = conversions.tips_cloud(frame.instruments, header)
    points = np.frombuffer(bytes(cloud.data), dtype=TIP_DTYPE, count=cloud.width)
    assert cloud.point_step == TIP_DTYPE.itemsize == 40
    assert points['type_id'][0] == 2 and points['source'][0] == PART_CLASPERS
    assert points['instance_id'][0] == inst.track_id and points['type_score'][0] == pytest.approx(1.0)
    np.testing.assert_allclose([points['x'][0], points['y'][0], points['z'][0]], inst.xyz, atol=1e-6)
    poses = conversions.tip_poses(frame.instruments, header)
    q = poses.poses[0].orientation
    np.testing.assert_allclose(rotate_x_axis((q.x, q.y, q.z, q.w)), inst.axis_xyz, atol=1e-6)
    assert poses.poses[0].position.z == pytest.approx(inst.xyz[2])
    markers = conversions.tip_markers(frame.instruments, header)
    assert len(markers.markers) == 4  # DELETEALL, sphere, shaft arrow, label
    ids = conversions.image_msg(frame.instance_ids_image(), header, 'mono16')
    assert ids.encoding == 'mono16' and ids.step == 2 * W
    decoded = np.frombuffer(bytes(ids.data), '<u2').reshape(H, W)
    assert set(np.unique(decoded)) == {0, inst.track_id}


def test_axis_quaternion_maps_x_onto_the_axis():
    for axis in ([0, 0, 1], [1, 0, 0], [-1, 0, 0], [0.3, -0.5, 0.8]):
        axis = np.asarray(axis, float) / np.linalg.norm(axis)
        np.testing.assert_allclose(rotate_x_axis(axis_quaternion(axis)), axis, atol=1e-9)
    assert axis_quaternion(None) == (0.0, 0.0, 0.0, 1.0)


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
    infos, R, T = raw_stereo_rig()
    truth = [(3, np.array([-0.012, -0.004, 0.07]), (0, 0)), (5, np.array([0.010, 0.006, 0.09]), (W - 1, H - 1))]
    maps, raw_uv = {}, {}
    for side, (rvec, tvec) in (('left', (np.zeros(3), np.zeros(3))), ('right', (cv2.Rodrigues(R)[0], T))):
        type_map, parts_map = blank()
        for type_id, xyz, border in truth:
            uv = cv2.projectPoints(xyz.reshape(1, 3), rvec, tvec, infos[side]['k'], infos[side]['d'])[0].ravel()
            raw_uv[side, type_id] = uv
            draw_instrument(type_map, parts_map, type_id, uv, border)
        maps[side] = result(type_map, parts_map)
    rectifiers = [pixel_rectifier(*(infos[side][key] for key in 'kdrp')) for side in ('left', 'right')]
    assert all(r is not None for r in rectifiers)
    calib = StereoCalibration(infos['left']['p'], infos['right']['p'], *rectifiers)
    frame = InstrumentPerception(CONFIG).process(maps['left'], maps['right'], calib)
    unrectified = InstrumentPerception(CONFIG).process(
        maps['left'], maps['right'], StereoCalibration(infos['left']['p'], infos['right']['p']))
    got = {i.type_id: i for i in frame.instruments}
    raw = {i.type_id: i for i in unrectified.instruments}
    for type_id, xyz, _ in truth:
        expected = infos['left']['r'] @ xyz  # the rectified left optical frame
        assert np.linalg.norm(np.asarray(got[type_id].xyz) - expected) < 0.002, (got[type_id].xyz, expected)
        assert np.hypot(*(np.asarray(got[type_id].tip) - raw_uv['left', type_id])) < 0.5
        assert not np.linalg.norm(np.asarray(raw[type_id].xyz) - expected) < 0.002  # raw pixels: wrong or no 3-D


def test_rectified_camera_info_needs_no_pixel_rectifier():
    assert pixel_rectifier(K, np.zeros(5), np.eye(3), P_LEFT) is None
    assert pixel_rectifier(K, [], np.zeros(9), P_RIGHT) is None  # unset R: none
    assert pixel_rectifier(np.zeros(9), [0.1, 0, 0, 0, 0], np.eye(3), P_LEFT) is None  # no K given


def test_a_3d_failure_keeps_the_2d_outputs():
    maps = stereo_results([(2, np.array([0.003, 0.002, 0.06]), (0, H - 1))])

    def broken(uv):
        raise np.linalg.LinAlgError('SVD did not converge')
    calib = StereoCalibration(P_LEFT, P_RIGHT, broken, None)
    frame = InstrumentPerception(CONFIG).process(maps['left'], maps['right'], calib)
    assert 'SVD' in frame.stereo_error and len(frame.instruments) == 1
    assert np.isnan(frame.instruments[0].xyz).all()


def test_the_second_eye_gets_the_same_geometry_without_votes_scores_or_taper():
    type_map, parts_map = blank()
    # A shaft along the image rows that narrows as it recedes (the taper stereo falls back on), its head.
    shaft = np.array([[0, 88], [150, 95], [150, 105], [0, 112]], np.int32)
    for img, value in ((type_map, 3), (parts_map, PART_SHAFT)):
        cv2.fillConvexPoly(img, shaft, value)
    draw_instrument(type_map, parts_map, 3, (165, 100), (150, 100), parts=('wrist', 'claspers'))
    draw_instrument(type_map, parts_map, 6, (170.2, 150.4), (W - 1, H - 1))
    full, full_map = find_instruments(result(type_map, parts_map), min_area=30)
    geometry, geometry_map = find_instruments(result(type_map, parts_map), min_area=30, geometry_only=True)
    np.testing.assert_array_equal(geometry_map, full_map)
    assert any(f.shaft_taper is not None for f in full)
    for f, g in zip(full, geometry, strict=True):
        assert (g.index, g.area_px, g.tip, g.source, g.axis_point, g.axis_dir) == \
            (f.index, f.area_px, f.tip, f.source, f.axis_point, f.axis_dir)
        assert g.type_votes is None and math.isnan(g.score) and g.shaft_taper is None


def test_network_resolution_results_are_scaled_to_the_input():
    """Instances and tips run on the network grid; tips come out in input pixels, images at input size."""
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 3, (80.3, 70.6), (0, 20))
    small = SegmentationResult.from_labels(parts_map, type_map, size=(2 * H, 2 * W))
    (inst,) = find_instruments(small, min_area=120)[0]
    assert inst.tip == pytest.approx((2 * 80.3 + 0.5, 2 * 70.6 + 0.5), abs=0.6)
    assert inst.area_px == pytest.approx(4 * np.count_nonzero(type_map))
    frame = InstrumentPerception(CONFIG).process(small)
    assert frame.labels_image().shape == frame.instance_ids_image().shape == (2 * H, 2 * W)


def test_wrapped_ids_skip_live_tracks_and_colours_differ():
    perception = InstrumentPerception(CONFIG)
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 3, (80, 70), (0, 20))
    (first,) = perception.process(result(type_map, parts_map)).instruments
    perception.tracker._next_id = 65535  # about to wrap back to 1, which the first tool still holds
    draw_instrument(type_map, parts_map, 6, (170, 120), (W - 1, H - 1))
    draw_instrument(type_map, parts_map, 2, (200, 30), (W - 1, 0))
    frame = perception.process(result(type_map, parts_map))
    ids = sorted(i.track_id for i in frame.instruments)
    assert len(set(ids)) == 3 and first.track_id in ids and 65535 in ids
    assert len({i.colour for i in frame.instruments}) == 3


def test_a_zero_distance_gate_still_tracks_overlapping_masks():
    perception = InstrumentPerception(PerceptionConfig(min_instance_area=30, track_max_distance=0.0))
    ids = []
    for step in range(3):
        type_map, parts_map = blank()
        draw_instrument(type_map, parts_map, 3, (80 + step, 70), (0, 20))
        ids.append(perception.process(result(type_map, parts_map)).instruments[0].track_id)
    assert len(set(ids)) == 1


def test_masks_follow_the_voted_types_in_pixel_mode():
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 4, (120, 90), (0, 10))
    noisy = np.where((type_map > 0) & (np.random.default_rng(1).random(type_map.shape) < 0.3), 2, type_map)
    frame = InstrumentPerception(PerceptionConfig(min_instance_area=30, labels_mode='pixel')).process(
        result(noisy.astype(np.uint8), parts_map))
    assert frame.present_types() == [4]
    assert (frame.type_mask(4) == 255).sum() == (type_map > 0).sum()  # the whole instrument, noise included
    assert (frame.labels_image() == 2).any()  # while ~/labels shows the raw per-pixel types


def test_stereo_images_of_different_sizes_are_refused_without_losing_2d():
    maps = stereo_results([(2, np.array([0.003, 0.002, 0.06]), (0, H - 1))])
    small = SegmentationResult.from_labels(maps['right'].net_parts[::2, ::2], maps['right'].net_type[::2, ::2])
    frame = InstrumentPerception(CONFIG).process(maps['left'], small, StereoCalibration(P_LEFT, P_RIGHT))
    assert 'differ in size' in frame.stereo_error and len(frame.instruments) == 1


def test_without_parts_two_close_instruments_stay_apart():
    type_map, _ = blank()
    type_map[40:52, 0:200] = 3
    type_map[56:68, 0:200] = 5  # a 4 px gap
    frame = InstrumentPerception(CONFIG).process(SegmentationResult.from_labels(None, type_map))
    assert len(frame.instruments) == 2


def test_jaws_labelled_shaft_beyond_the_wrist_still_give_the_clasper_tip():
    """A model that takes gold jaws for shaft and puts its few clasper pixels on the wrist's pulleys:
    the pixels beyond the wrist are the jaws whatever their label, so the tip stays the jaws' centroid.
    Exact label maps come back unchanged (the ground truth's tip is the same function)."""
    parts = np.zeros((H, W), np.uint8)
    cv2.line(parts, (0, 160), (120, 100), PART_SHAFT, 15)
    cv2.line(parts, (120, 100), (160, 80), PART_CLASPERS, 9)
    cv2.circle(parts, (120, 100), 10, PART_WRIST, -1)
    assert np.array_equal(jaw_parts(parts > 0, parts), parts)
    ys, xs = np.nonzero(parts == PART_CLASPERS)
    jaws_centre = (xs.mean(), ys.mean())
    noisy = np.where(parts == PART_CLASPERS, PART_SHAFT, parts).astype(np.uint8)
    ys, xs = np.nonzero(noisy == PART_WRIST)
    proximal = xs < 116  # stray clasper pixels on the wrist's proximal pulleys
    noisy[ys[proximal][::3], xs[proximal][::3]] = PART_CLASPERS
    type_map = np.where(parts > 0, 4, 0).astype(np.uint8)
    (inst,) = process(type_map, noisy).instruments
    assert inst.source == 'claspers' and inst.tip == pytest.approx(jaws_centre, abs=0.6)


def test_a_wrist_taken_for_shaft_does_not_move_the_tip_off_the_jaws():
    """The other mistake (synthetic bags): the wrist mostly labelled shaft, a sliver of wrist at its back,
    the jaws right. The model's claspers reach the distal end, so they stay the jaws: the pixels between
    the sliver and the jaws must not become claspers and pull the tip back."""
    parts = np.zeros((H, W), np.uint8)
    cv2.line(parts, (0, 160), (130, 95), PART_SHAFT, 15)  # shaft, and the wrist labelled shaft up to x = 130
    cv2.line(parts, (130, 95), (160, 80), PART_CLASPERS, 9)
    cv2.circle(parts, (100, 110), 4, PART_WRIST, -1)  # the sliver at the wrist's back
    ys, xs = np.nonzero(parts == PART_CLASPERS)
    jaws_centre = (xs.mean(), ys.mean())
    assert np.array_equal(jaw_parts(parts > 0, parts), parts)
    (inst,) = process(np.where(parts > 0, 4, 0).astype(np.uint8), parts).instruments
    assert inst.source == 'claspers' and inst.tip == pytest.approx(jaws_centre, abs=0.6)
    # But a jaw base taken for shaft, less than the claspers beyond it, is still jaws.
    parts = np.zeros((H, W), np.uint8)
    cv2.line(parts, (0, 160), (110, 105), PART_SHAFT, 15)
    cv2.circle(parts, (110, 105), 7, PART_WRIST, -1)
    cv2.line(parts, (118, 101), (160, 80), PART_CLASPERS, 9)
    jaws = parts == PART_CLASPERS
    cv2.line(parts, (118, 101), (128, 96), PART_SHAFT, 9)  # the jaws' base, labelled shaft
    ys, xs = np.nonzero(jaws | ((parts == PART_SHAFT) & (np.arange(W)[None, :] >= 118)))
    (inst,) = process(np.where(parts > 0, 4, 0).astype(np.uint8), parts).instruments
    assert inst.source == 'claspers' and inst.tip == pytest.approx((xs.mean(), ys.mean()), abs=1.0)


def test_tissue_taken_for_shaft_beyond_the_jaws_does_not_pull_the_tip():
    """A model that takes a patch of tissue next to the jaws for shaft (synthetic seed-4 and seed-9 bags):
    more than twice the wrist's area of it lies beyond the wrist, so it is no jaw taken for shaft, and
    the tip stays on the model's own claspers."""
    parts = np.zeros((H, W), np.uint8)
    cv2.circle(parts, (185, 65), 40, PART_SHAFT, -1)  # the tissue, touching the jaws
    cv2.line(parts, (0, 160), (110, 105), PART_SHAFT, 15)
    cv2.circle(parts, (110, 105), 8, PART_WRIST, -1)
    cv2.line(parts, (118, 101), (145, 88), PART_CLASPERS, 9)
    ys, xs = np.nonzero(parts == PART_CLASPERS)
    (inst,) = process(np.where(parts > 0, 4, 0).astype(np.uint8), parts).instruments
    assert inst.source == 'claspers' and inst.tip == pytest.approx((xs.mean(), ys.mean()), abs=1.0)


def test_articulated_jaws_labelled_shaft_are_not_a_second_instrument():
    """Jaws bent 35 degrees at the wrist, labelled shaft: a shaft piece that does not reach the border
    seeds no instrument of its own (shafts come in from outside the view)."""
    parts = np.zeros((H, W), np.uint8)
    wrist = np.array([130.0, 110.0])
    cv2.line(parts, (0, 170), tuple(int(c) for c in wrist), PART_SHAFT, 13)
    bent = np.radians(-25.0 - 35.0)  # the shaft rises at 25 degrees; the jaws bend a further 35
    jaw_end = wrist + 45 * np.array([np.cos(bent), np.sin(bent)])
    cv2.line(parts, tuple(int(c) for c in wrist), tuple(int(round(c)) for c in jaw_end), PART_SHAFT, 9)
    cv2.circle(parts, tuple(int(c) for c in wrist), 9, PART_WRIST, -1)
    cv2.circle(parts, tuple(int(round(c)) for c in jaw_end), 4, PART_WRIST, -1)  # a jaw tip taken for wrist
    type_map = np.where(parts > 0, 4, 0).astype(np.uint8)
    (inst,) = process(type_map, parts).instruments
    jaws = (parts == PART_SHAFT) & (np.arange(W)[None, :] > wrist[0] + 9)
    ys, xs = np.nonzero(jaws)
    assert inst.source == 'claspers' and np.hypot(inst.tip[0] - xs.mean(), inst.tip[1] - ys.mean()) < 4


def test_pieces_that_do_not_enter_the_view_join_a_neighbour_stay_as_large_bands_or_go():
    """Regions that do not reach the border: a nearby piece is part of the nearest instrument, a far
    long band is an instrument of its own (a grasper whose shaft is hidden by tissue, all labelled
    jaws, or a shaft), a far blob is noise, large or small, with or without shaft pixels."""
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 2, (90, 96), (0, 96))
    alone = process(type_map, parts_map).instruments[0].area_px
    cv2.rectangle(parts_map, (104, 92), (110, 100), PART_CLASPERS, -1)  # 10 px beyond the jaws
    cv2.rectangle(type_map, (104, 92), (110, 100), 2, -1)
    found = process(type_map, parts_map).instruments
    assert len(found) == 1 and found[0].area_px == alone + 7 * 9
    band = (slice(150, 160), slice(150, 210))
    parts_map[band], type_map[band] = PART_CLASPERS, 2
    found = process(type_map, parts_map).instruments
    assert len(found) == 2 and found[1].area_px == 10 * 60
    parts_map[band], type_map[band] = 0, 0
    cv2.circle(parts_map, (200, 40), 8, PART_CLASPERS, -1)
    cv2.circle(type_map, (200, 40), 8, 2, -1)
    assert len(process(type_map, parts_map).instruments) == 1
    # A small piece with "shaft" in it is no more an instrument (a vessel taken for a shaft), unless it
    # comes in across the field stop.
    cv2.circle(parts_map, (200, 40), 8, 0, -1)
    cv2.circle(type_map, (200, 40), 8, 0, -1)
    parts_map[30:36, 180:195], type_map[30:36, 180:195] = PART_SHAFT, 2  # 90 px: under 4 x min_instance_area
    assert len(process(type_map, parts_map).instruments) == 1
    result = SegmentationResult.from_labels(parts_map, type_map)
    result.net_dark = np.zeros((H, W), bool)
    result.net_dark[25:40, 198:] = True  # the field stop, 3 px from it
    assert len(InstrumentPerception(CONFIG).process(result).instruments) == 2
    # A large far blob with shaft in it is no instrument either (tissue taken for metal): only a band is.
    parts_map[30:36, 180:195], type_map[30:36, 180:195] = 0, 0
    cv2.circle(parts_map, (200, 40), 12, PART_SHAFT, -1)  # 450 px: over 4 x min_instance_area, round
    cv2.circle(type_map, (200, 40), 12, 2, -1)
    assert len(process(type_map, parts_map).instruments) == 1
    parts_map[25:55, 170:235], type_map[25:55, 170:235] = 0, 0
    parts_map[30:40, 170:230], type_map[30:40, 170:230] = PART_SHAFT, 2  # the same area as a band
    assert len(process(type_map, parts_map).instruments) == 2


def test_a_band_along_the_field_stop_is_not_an_instrument():
    """The dark rim of the field stop, taken for a thin shaft, runs along the stop: it goes. An
    instrument that comes into view across the stop stays, and without a dark map nothing is dropped."""
    type_map, parts_map = blank()
    yy, xx = np.mgrid[:H, :W]
    outside = np.hypot(xx - W / 2, yy - H / 2) > 100  # a circular field stop
    rim = ~outside & (np.hypot(xx - W / 2, yy - H / 2) > 96) & (yy < H / 2) & (xx < W / 2)  # 4 px wide
    parts_map[rim], type_map[rim] = PART_SHAFT, 1
    draw_instrument(type_map, parts_map, 2, (120, 110), (250, 180))  # from beyond the stop, bottom right
    parts_map[outside & (xx < W / 2)], type_map[outside & (xx < W / 2)] = 0, 0  # the stop hides it there
    result = SegmentationResult.from_labels(parts_map, type_map)
    assert len(InstrumentPerception(CONFIG).process(result).instruments) == 2
    result.net_dark = outside & ~(type_map > 0)
    (inst,) = InstrumentPerception(CONFIG).process(result).instruments
    assert inst.type_id == 2 and inst.tip == pytest.approx(jaws_centre(parts_map, type_map, 2), abs=1.0)


def test_a_black_bar_taken_for_a_shaft_is_not_an_instrument():
    """A letterbox bar along the bottom of the frame, near-black through and through, labelled shaft (as a
    model that learnt black shafts does): it goes. A tool half in shadow stays."""
    type_map, parts_map = blank()
    parts_map[H - 8:, :], type_map[H - 8:, :] = PART_SHAFT, 1
    draw_instrument(type_map, parts_map, 2, (120, 80), (0, 20))
    result = SegmentationResult.from_labels(parts_map, type_map)
    assert len(InstrumentPerception(CONFIG).process(result).instruments) == 2
    result.net_dark = np.zeros((H, W), bool)
    result.net_dark[H - 8:, :] = True
    result.net_dark[:, :60] |= type_map[:, :60] == 2  # the tool's proximal half in shadow
    (inst,) = InstrumentPerception(CONFIG).process(result).instruments
    assert inst.type_id == 2 and inst.tip == pytest.approx(jaws_centre(parts_map, type_map, 2), abs=1.0)
