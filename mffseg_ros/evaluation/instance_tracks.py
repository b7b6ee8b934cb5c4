"""What a tool tracker receives on a labelled video, scored by instrument masks (no tips needed).

For real video whose labels are instrument instances (EndoVis 2017's per-instrument folders,
CholecInstanceSeg polygons, CholecSeg8k's grasper/hook classes) there are no true tips, but there are
true instruments: each frame's published instances (the track-id image) are matched one-to-one to the
true instances by mask IoU. Reported: instruments per frame against those visible, the frames with
exactly the visible count, instance precision and recall (false instruments counted), track-id switches
and the distinct track ids over the sequence against the distinct true instruments.
"""
import numpy as np
from scipy.optimize import linear_sum_assignment

from mffseg_ros.evaluation.instrument_scores import count_switch

MIN_IOU = 0.3  # a published instance is that true instrument (a half-segmented tool still counts; a sliver does not)


def _areas(ids):
    values, counts = np.unique(ids[ids > 0], return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def instance_ious(predicted, truth, pred_area, true_area, pred_ids, true_ids):
    """IoU matrix (len(pred_ids) x len(true_ids)) of the masks of two id images of one frame, given each
    image's {id: area} (_areas)."""
    if not pred_ids or not true_ids:
        return np.zeros((len(pred_ids), len(true_ids)))
    both = (predicted > 0) & (truth > 0)
    pairs, inter = np.unique(predicted[both].astype(np.int64) << 16 | truth[both], return_counts=True)
    overlap = dict(zip(pairs.tolist(), inter.tolist()))
    iou = np.zeros((len(pred_ids), len(true_ids)))
    for i, p in enumerate(pred_ids):
        for j, t in enumerate(true_ids):
            n = overlap.get(p << 16 | t, 0)
            iou[i, j] = n / (pred_area[p] + true_area[t] - n) if n else 0.0
    return iou


class InstanceTrackScorer:
    """Per frame: add(track-id image, true instance image, min_area); then summary(). tracks=False for
    frames that are not one video (several videos, or stand-alone scenes): their track ids mean nothing
    from frame to frame, so switches and distinct ids are left out of the summary."""

    def __init__(self, min_iou=MIN_IOU, *, tracks=True):
        self.min_iou, self.tracks = min_iou, tracks
        self.frames = self.predicted = self.visible = self.matched = self.count_exact = 0
        self.switches = 0
        self.track_ids, self.true_ids = set(), set()
        self._last_track = {}  # true instance id -> the track id it was last matched to

    def add(self, tracks, truth, min_area=1):
        """tracks: uint16 image of published track ids; truth: true instance ids (same size), instruments
        smaller than `min_area` pixels are not counted as visible (the node's own minimum). Returns this
        frame's counts."""
        if tracks.shape != truth.shape:
            raise ValueError(f'track image {tracks.shape} and ground truth {truth.shape} differ in size')
        pred_area, true_area = _areas(tracks), _areas(truth)
        pred_ids = sorted(pred_area)
        true_ids = sorted(t for t, a in true_area.items() if a >= min_area)
        iou = instance_ious(tracks, truth, pred_area, true_area, pred_ids, true_ids)
        matched = []
        if iou.size:
            rows, cols = linear_sum_assignment(-iou)
            matched = [(pred_ids[i], true_ids[j]) for i, j in zip(rows, cols) if iou[i, j] >= self.min_iou]
        if self.tracks:
            self.switches += sum(count_switch(self._last_track, t, p) for p, t in matched)
        self.frames += 1
        self.predicted += len(pred_ids)
        self.visible += len(true_ids)
        self.matched += len(matched)
        self.count_exact += int(len(pred_ids) == len(true_ids))
        self.track_ids.update(pred_ids)
        self.true_ids.update(true_ids)
        return {'instruments': len(pred_ids), 'visible': len(true_ids), 'matched': len(matched),
                'false_instruments': len(pred_ids) - len(matched), 'missed': len(true_ids) - len(matched)}

    def summary(self):
        frames = max(1, self.frames)
        summary = {
            'frames': self.frames, 'match_iou': self.min_iou,
            'instruments_per_frame': self.predicted / frames, 'visible_per_frame': self.visible / frames,
            'frames_with_exact_count': self.count_exact / frames,
            'precision': self.matched / self.predicted if self.predicted else None,  # None: nothing to divide
            'recall': self.matched / self.visible if self.visible else None,
            'false_instruments': self.predicted - self.matched, 'missed': self.visible - self.matched,
        }
        if self.tracks:
            summary.update(track_id_switches=self.switches, track_ids=len(self.track_ids),
                           true_instruments=len(self.true_ids))
        return summary


def format_track_summary(s):
    """Markdown lines of a summary()."""
    def f(v):
        return '–' if v is None else f'{v:.2f}'
    lines = [f"- instruments per frame {f(s['instruments_per_frame'])} for {f(s['visible_per_frame'])} visible; "
             f"exact count in {100 * s['frames_with_exact_count']:.0f} % of {s['frames']} frames",
             f"- instances (mask IoU >= {s['match_iou']}): precision {f(s['precision'])}, recall {f(s['recall'])} "
             f"({s['false_instruments']} false, {s['missed']} missed)"]
    if 'track_ids' in s:
        lines.append(f"- tracks: {s['track_ids']} distinct ids for {s['true_instruments']} true instruments, "
                     f"{s['track_id_switches']} id switches")
    return lines
