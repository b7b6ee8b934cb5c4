"""Instrument-level scores of a sequence: what a tool tracker receives, false positives included.

Per frame, predicted tips are matched one-to-one to the visible ground-truth instruments by position
(Hungarian on 2-D distance, at most `match_px` apart; types are NOT used, so a wrong type is a type
error, not a missed instrument). Reported: tip precision and recall, instruments per frame against
those visible, per-instrument type accuracy (unknown counted as wrong, and reported), track-id
switches (a ground-truth instrument matched to a different id than the last time it was matched),
2-D and 3-D tip errors and the 3-D shaft-axis angle error.
"""
import math

import numpy as np
from scipy.optimize import linear_sum_assignment

from mffseg_ros.inference.instruments import UNKNOWN_TYPE


def match_radius(size):
    """Largest distance (px) between a predicted and a true tip that still counts as found: 2.5 % of
    the image's long side (16 px at 512x640), about the length of a jaw."""
    return 0.025 * max(size)


def count_switch(last_track, true_id, track_id):
    """1 when the true instrument `true_id` was last matched to another track than `track_id`, else 0;
    records the match in `last_track` (true id -> track id), the state a scorer keeps over a sequence."""
    switched = true_id in last_track and last_track[true_id] != track_id
    last_track[true_id] = track_id
    return int(switched)


def _percentile(values, q):
    return float(np.percentile(values, q)) if len(values) else math.nan


class InstrumentScorer:
    def __init__(self, match_px):
        self.match_px = float(match_px)
        self.frames = 0
        self.predicted = self.visible = self.matched = 0
        self.count_exact = 0
        self.type_right = self.type_unknown = 0
        self.switches = 0
        self.track_ids = set()
        self.errors_2d, self.errors_3d, self.axis_deg = [], [], []
        self._last_id = {}

    def add(self, predicted, truth, predicted_axes=None):
        """predicted: records with u v x y z instance_id type_id (the ~/tips layout); truth: records of
        evaluation.ground_truth.GT_TIP_DTYPE; predicted_axes: N x 3 unit shaft axes (NaN: none) or None.
        Returns this frame's counts: {'matched', 'false_positives', 'missed', 'worst_error_px'} (the
        largest 2-D error of a matched tip; 0 without one)."""
        self.frames += 1
        self.predicted += len(predicted)
        self.visible += len(truth)
        self.count_exact += int(len(predicted) == len(truth))
        self.track_ids.update(int(i) for i in predicted['instance_id'])
        matched_before = self.matched
        if len(predicted) and len(truth):
            self._match(predicted, truth, predicted_axes)
        matched = self.matched - matched_before
        return {'matched': matched, 'false_positives': len(predicted) - matched, 'missed': len(truth) - matched,
                'worst_error_px': max(self.errors_2d[len(self.errors_2d) - matched:], default=0.0)}

    def _match(self, predicted, truth, predicted_axes):
        p_uv = np.column_stack([predicted['u'], predicted['v']]).astype(np.float64)
        t_uv = np.column_stack([truth['u'], truth['v']]).astype(np.float64)
        distance = np.linalg.norm(p_uv[:, None] - t_uv[None], axis=2)
        rows, cols = linear_sum_assignment(np.where(distance <= self.match_px, distance, 1e9))
        for i, j in zip(rows, cols):
            if distance[i, j] > self.match_px:
                continue
            self.matched += 1
            self.errors_2d.append(float(distance[i, j]))
            pred, true = predicted[i], truth[j]
            self.type_right += int(pred['type_id'] == true['type_id'])
            self.type_unknown += int(pred['type_id'] == UNKNOWN_TYPE)
            self.switches += count_switch(self._last_id, int(true['instance_id']), int(pred['instance_id']))
            p_xyz = np.array([pred['x'], pred['y'], pred['z']], np.float64)
            t_xyz = np.array([true['x'], true['y'], true['z']], np.float64)
            if np.all(np.isfinite(p_xyz)) and np.all(np.isfinite(t_xyz)):
                self.errors_3d.append(1000.0 * float(np.linalg.norm(p_xyz - t_xyz)))
            if predicted_axes is not None:
                a = np.asarray(predicted_axes[i], np.float64)
                b = np.array([true['ax'], true['ay'], true['az']], np.float64)
                if np.all(np.isfinite(a)) and np.all(np.isfinite(b)):
                    cos = np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1.0, 1.0)
                    self.axis_deg.append(math.degrees(math.acos(cos)))

    def summary(self):
        frames = max(1, self.frames)
        return {
            'frames': self.frames,
            'tip_precision': self.matched / self.predicted if self.predicted else math.nan,
            'tip_recall': self.matched / self.visible if self.visible else math.nan,
            'tips_predicted': self.predicted, 'tips_visible': self.visible, 'tips_matched': self.matched,
            'false_positives': self.predicted - self.matched, 'missed': self.visible - self.matched,
            'instruments_per_frame': self.predicted / frames, 'visible_per_frame': self.visible / frames,
            'frames_with_exact_count': self.count_exact / frames,
            'type_accuracy': self.type_right / self.matched if self.matched else math.nan,
            'type_unknown_rate': self.type_unknown / self.matched if self.matched else math.nan,
            'track_id_switches': self.switches, 'track_ids': len(self.track_ids),
            'tip_error_2d_px_median': _percentile(self.errors_2d, 50),
            'tip_error_2d_px_p90': _percentile(self.errors_2d, 90),
            'tip_error_3d_mm_median': _percentile(self.errors_3d, 50),
            'tip_error_3d_mm_p90': _percentile(self.errors_3d, 90),
            'tips_triangulated': len(self.errors_3d),
            'axis_error_deg_median': _percentile(self.axis_deg, 50),
            'axis_error_deg_p90': _percentile(self.axis_deg, 90),
            'match_px': self.match_px,
        }


def format_summary(s):
    """Human-readable lines of an InstrumentScorer summary."""
    def f(v, digits=2):
        return 'n/a' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.{digits}f}'
    return [
        f"tips         precision {f(s['tip_precision'])}, recall {f(s['tip_recall'])}  "
        f"({s['tips_matched']} matched, {s['false_positives']} false positives, {s['missed']} missed; "
        f"match radius {s['match_px']:.0f} px)",
        f"instruments  {f(s['instruments_per_frame'])} per frame for {f(s['visible_per_frame'])} visible; "
        f"exact count in {100 * s['frames_with_exact_count']:.0f} % of frames",
        f"types        accuracy {f(s['type_accuracy'])} per matched instrument "
        f"(unknown {f(s['type_unknown_rate'])})",
        f"tracks       {s['track_id_switches']} id switches, {s['track_ids']} distinct ids over {s['frames']} frames",
        f"tip error    2-D median {f(s['tip_error_2d_px_median'], 1)} px (p90 {f(s['tip_error_2d_px_p90'], 1)}), "
        f"3-D median {f(s['tip_error_3d_mm_median'], 1)} mm (p90 {f(s['tip_error_3d_mm_p90'], 1)}, "
        f"{s['tips_triangulated']} triangulated)",
        f"shaft axis   angle error median {f(s['axis_error_deg_median'], 1)} deg "
        f"(p90 {f(s['axis_error_deg_p90'], 1)})",
    ]
