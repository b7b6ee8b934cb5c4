"""`mffseg evaluate --bag`: the node's whole post-processing, in process, over a stereo bag with ground
truth (written by `mffseg bag synth`), scored like a tool tracker would judge it.

Every stereo frame of the bag is segmented (both eyes in one batch), passed through one
InstrumentPerception (tracking state carries over, as in the node) and scored: Dice of the published
label images, and the instrument-level scores of evaluation/instrument_scores.py.
"""
import heapq
import json
import logging
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mffseg_ros import topics
from mffseg_ros.data.bags import cloud_points, image_array, read_bag
from mffseg_ros.errors import DataError
from mffseg_ros.evaluation.instrument_scores import InstrumentScorer, format_summary, match_radius
from mffseg_ros.inference.image_codec import decode_image
from mffseg_ros.inference.perception import InstrumentPerception, PerceptionConfig
from mffseg_ros.inference.stereo import StereoCalibration, pixel_rectifier
from mffseg_ros.inference.tip_records import tip_records
from mffseg_ros.visualize import contact_sheet, instrument_overlay, save_png

log = logging.getLogger(__name__)
WORST_FRAMES = 6  # overlays of the worst frames (false positives + missed tips, then tip error): worst_frames.png
_KEYS = {topics.LEFT_IMAGE: 'left', topics.RIGHT_IMAGE: 'right', topics.LEFT_INFO: 'info_left',
         topics.RIGHT_INFO: 'info_right', topics.GT_TYPE: 'type', topics.GT_PARTS: 'parts', topics.GT_TIPS: 'tips'}


def dice(a, b):
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def score_frame(labels, parts, gt):
    """Binary and parts Dice of one frame's published label images against its ground truth (a dict
    with 'type' and, optionally, 'parts'; 255 = not labelled). Used here and by the demo."""
    valid = gt['type'] != 255
    scores = {'dice_binary': dice((labels > 0) & valid, (gt['type'] > 0) & valid)}
    gt_parts = gt.get('parts')
    present = [c for c in (1, 2, 3) if gt_parts is not None and (gt_parts == c).any()]
    if parts is not None and present:
        scores['dice_parts'] = float(np.mean([dice((parts == c) & valid, gt_parts == c) for c in present]))
    return scores


def _rgb(msg):
    return decode_image(msg.encoding, msg.height, msg.width, msg.step, bytes(msg.data), msg.is_bigendian)


def _calibration(info_left, info_right):
    rectifiers = [pixel_rectifier(i.k, i.d, i.r, i.p, i.distortion_model) for i in (info_left, info_right)]
    return StereoCalibration(info_left.p, info_right.p, *rectifiers)


def read_frames(bag, limit=None):
    """{stamp ns: {'left', 'right', 'info_left', 'info_right', 'type', 'parts', 'tips'}} (messages)."""
    frames = {}
    for topic, stamp, msg in read_bag(bag, topics=list(_KEYS)):
        frames.setdefault(stamp, {})[_KEYS[topic]] = msg
    complete = {s: f for s, f in frames.items() if {'left', 'tips', 'type'} <= set(f)}
    if not complete:
        raise DataError(f'{bag}: no frames with a left image and ground truth ({topics.GT_TIPS}, {topics.GT_TYPE}); '
                        'write one with `mffseg bag synth`')
    stamps = sorted(complete)[:limit]
    return {s: complete[s] for s in stamps}


def _badness(row, match_px):
    """False positives + missed tips; among equals, the largest tip error (a fraction below 1)."""
    return row['false_positives'] + row['missed'] + row['worst_error_px'] / (match_px + 1e-9)


def _with_truth(overlay, truth, radius):
    """The node's overlay with the true tips drawn: a green cross in the match radius's circle."""
    for t in truth:
        u, v = int(round(float(t['u']))), int(round(float(t['v'])))
        cv2.circle(overlay, (u, v), int(round(radius)), (0, 255, 0), 1, cv2.LINE_AA)
        cv2.drawMarker(overlay, (u, v), (0, 255, 0), cv2.MARKER_CROSS, int(radius), 2)
    return overlay


def evaluate_bag(segmenter, bag, *, config=None, limit=None, stereo=True, worst=0):
    """Scores of `segmenter` + the post-processing on `bag`: a dict with 'instruments' (see
    instrument_scores.InstrumentScorer.summary), 'dice_binary_mean', 'dice_parts_mean', 'frames'
    (per frame: matched, false positives, missed, worst tip error, Dice) and, with `worst` > 0, 'worst':
    the overlays (true tips drawn) of the `worst` frames with the most false positives + missed tips,
    then the largest tip errors."""
    frames = read_frames(bag, limit)
    worst_frames = []  # (badness, -frame number, row, overlay): a bounded heap
    perception = InstrumentPerception(config or PerceptionConfig())
    scorer = None
    rows = []
    calibration = None
    for stamp, f in tqdm(frames.items(), desc='evaluate bag', unit='frame'):
        left = _rgb(f['left'])
        use_right = stereo and 'right' in f and 'info_left' in f and 'info_right' in f
        if use_right and calibration is None:
            calibration = _calibration(f['info_left'], f['info_right'])
        if scorer is None:
            scorer = InstrumentScorer(match_radius(left.shape[:2]))
        results = segmenter.segment_batch([left, _rgb(f['right'])] if use_right else [left])
        frame = perception.process(results[0], results[1] if use_right else None,
                                   calibration if use_right else None, stamp * 1e-9)
        truth = cloud_points(f['tips'])
        axes = np.array([i.axis_xyz if i.axis_xyz is not None else (np.nan,) * 3 for i in frame.instruments])
        counts = scorer.add(tip_records(frame.instruments), truth, axes.reshape(-1, 3))
        gt = {'type': image_array(f['type'])}
        if 'parts' in f:
            gt['parts'] = image_array(f['parts'])
        row = {'stamp_ns': stamp, 'frame': len(rows), 'instruments': len(frame.instruments), 'visible': len(truth),
               **counts, **score_frame(frame.labels_image(), frame.parts_image(), gt)}
        rows.append(row)
        badness = _badness(row, scorer.match_px)
        if worst and (len(worst_frames) < worst or badness > worst_frames[0][0]):
            entry = (badness, -row['frame'], row,
                     _with_truth(instrument_overlay(left, frame), truth, scorer.match_px))
            (heapq.heappush if len(worst_frames) < worst else heapq.heapreplace)(worst_frames, entry)
    scores = {
        'bag': str(bag), 'model': segmenter.describe(), 'max_instruments': perception.config.max_instruments,
        'dice_binary_mean': float(np.mean([r['dice_binary'] for r in rows])),
        'dice_parts_mean': float(np.mean([r['dice_parts'] for r in rows if 'dice_parts' in r]))
        if any('dice_parts' in r for r in rows) else None,
        'instruments': scorer.summary(), 'frames': rows,
        'worst': [(row, overlay) for _, _, row, overlay in sorted(worst_frames, reverse=True)],
    }
    return scores


def run(args, segmenter):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = PerceptionConfig(max_instruments=args.max_instruments)
    scores = evaluate_bag(segmenter, args.bag, config=config, limit=args.limit, worst=WORST_FRAMES)
    worst = scores.pop('worst')
    (out / 'bag_scores.json').write_text(json.dumps(scores, indent=1))
    if worst:
        captions = [f"frame {r['frame']}: {r['matched']} found (worst {r['worst_error_px']:.1f} px), "
                    f"{r['false_positives']} false, {r['missed']} missed" for r, _ in worst]
        save_png(out / 'worst_frames.png', contact_sheet([o for _, o in worst], 3, captions))
    print(f"{args.bag}: {len(scores['frames'])} frames, {scores['model']}")
    print(f"Dice         binary {scores['dice_binary_mean']:.3f}, parts "
          + (f"{scores['dice_parts_mean']:.3f}" if scores['dice_parts_mean'] is not None else 'n/a'))
    for line in format_summary(scores['instruments']):
        print(line)
    print(f'\nwrote {out / "bag_scores.json"}' + (f' and {out / "worst_frames.png"}' if worst else ''))
    return 0
