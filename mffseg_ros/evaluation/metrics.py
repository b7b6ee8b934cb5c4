"""Segmentation metrics (numpy, OpenCV distance transform): Dice, IoU, Hausdorff, sensitivity, specificity.

Conventions (also in docs/EVALUATION.md):
- Label 255 in the ground truth is ignored: those pixels count for no class, in no metric.
- Per image and class, a metric that is undefined is NaN and excluded from every mean:
  Dice/IoU when the class is in neither mask, sensitivity when it is absent from the ground truth,
  specificity when every pixel is that class.
- Hausdorff (pixels) is the symmetric Hausdorff distance between the two pixel sets, for the
  instrument classes (background: NaN). Both empty:
  NaN (excluded). Exactly one empty: the image diagonal, the worst possible distance, so that a
  missed or hallucinated instrument is penalised rather than silently dropped.
- "mean" = mean over the foreground classes (ids >= 1) of each class's mean over images.
- "paper" = the EndoVis 2017 / Islam et al. averaging: per image, the mean over the foreground
  classes present in the ground truth; then the mean over images. An image whose ground truth has
  no foreground scores Dice = IoU = 1 (Hausdorff 0) if nothing is predicted, else 0 (Hausdorff = the
  diagonal); its sensitivity is excluded and its specificity is the mean over all foreground classes.
- "dataset" = IoU and Dice from the confusion matrix summed over all images.
"""
import math
from dataclasses import dataclass

import cv2
import numpy as np

IGNORE_INDEX = 255
METRICS = ('dice', 'iou', 'hausdorff', 'sensitivity', 'specificity')


def _safe_ratio(num, den):
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def confusion_matrix(gt, pred, num_classes, ignore_index=IGNORE_INDEX):
    """C x C pixel counts, rows = ground truth, columns = prediction; ignored and out-of-range
    ground-truth pixels are dropped. Predictions outside 0..C-1 raise (a model bug, not data)."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f'ground truth {gt.shape} and prediction {pred.shape} differ in shape')
    keep = (gt != ignore_index) & (gt < num_classes)
    g = gt[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f'prediction has labels outside 0..{num_classes - 1}')
    return np.bincount(g * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def hausdorff_distance(a, b, *, empty_distance=None):
    """Symmetric Hausdorff distance in pixels between the True pixels of two boolean masks.

    Both empty -> NaN; one empty -> `empty_distance` (default: the image diagonal)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f'mask shapes differ: {a.shape} vs {b.shape}')
    has_a, has_b = a.any(), b.any()
    if not has_a and not has_b:
        return math.nan
    if not (has_a and has_b):
        return float(math.hypot(*a.shape)) if empty_distance is None else float(empty_distance)
    # The nearest point of either set lies inside the bounding box of both: crop for speed (exact).
    rows = np.flatnonzero((a | b).any(axis=1))
    cols = np.flatnonzero((a | b).any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    a, b = a[box], b[box]
    return float(max(_distance_to(b)[a].max(), _distance_to(a)[b].max()))


def _distance_to(mask):
    """Exact Euclidean distance of every pixel to the nearest True pixel of `mask` (OpenCV's
    precise mode is an exact EDT, ~3x faster than scipy's)."""
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


@dataclass
class ImageScores:
    """Scores of one image for one task. Per-class arrays have one entry per class (NaN = undefined)."""
    dice: np.ndarray
    iou: np.ndarray
    hausdorff: np.ndarray
    sensitivity: np.ndarray
    specificity: np.ndarray
    paper: dict      # metric -> the image's paper-style value (NaN = excluded)
    confusion: np.ndarray


def score_image(gt, pred, num_classes, ignore_index=IGNORE_INDEX):
    """All metrics of one image. `gt`, `pred`: HxW integer label maps."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    cm = confusion_matrix(gt, pred, num_classes, ignore_index)
    tp = np.diag(cm).astype(np.float64)
    fn = cm.sum(axis=1) - tp
    fp = cm.sum(axis=0) - tp
    tn = cm.sum() - tp - fn - fp
    valid = gt != ignore_index
    diagonal = math.hypot(*gt.shape)
    # Background's Hausdorff says nothing about instruments and costs a full-frame transform: NaN.
    hd = np.array([math.nan] + [hausdorff_distance((gt == c) & valid, (pred == c) & valid,
                                                   empty_distance=diagonal) for c in range(1, num_classes)])
    scores = ImageScores(dice=_safe_ratio(2 * tp, 2 * tp + fp + fn), iou=_safe_ratio(tp, tp + fp + fn),
                         hausdorff=hd, sensitivity=_safe_ratio(tp, tp + fn),
                         specificity=_safe_ratio(tn, tn + fp), paper={}, confusion=cm)
    present = np.flatnonzero(tp + fn > 0)
    present = present[present >= 1]
    if present.size:
        scores.paper = {m: float(np.nanmean(getattr(scores, m)[present]))
                        if np.isfinite(getattr(scores, m)[present]).any() else math.nan for m in METRICS}
    else:  # no instrument in the ground truth: a clean prediction is perfect, anything else fails
        predicted_fg = fp[1:].sum() > 0
        scores.paper = {'dice': 0.0 if predicted_fg else 1.0, 'iou': 0.0 if predicted_fg else 1.0,
                        'hausdorff': diagonal if predicted_fg else 0.0, 'sensitivity': math.nan,
                        'specificity': float(np.nanmean(scores.specificity[1:]))
                        if np.isfinite(scores.specificity[1:]).any() else math.nan}
    return scores


def _nanmean(values):
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    return float(values[finite].mean()) if finite.any() else math.nan


class TaskMeter:
    """Accumulates image scores of one task and summarises them (see the module docstring)."""

    def __init__(self, task, class_names, ignore_index=IGNORE_INDEX):
        self.task = task
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = ignore_index
        self.images = []  # ImageScores per scored image
        self.names = []
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def add(self, gt, pred, name=''):
        """Score one image. Returns its ImageScores, or None if the ground truth is all ignored
        (the data set does not label this task)."""
        gt = np.asarray(gt)
        if not (gt != self.ignore_index).any():
            return None
        scores = score_image(gt, pred, self.num_classes, self.ignore_index)
        self.images.append(scores)
        self.names.append(name)
        self.confusion += scores.confusion
        return scores

    def summary(self):
        """JSON-ready dict: per-class means, foreground mean, paper averaging, data-set-wide IoU/Dice."""
        per_class = {}
        for c, cname in enumerate(self.class_names):
            entry = {m: _nanmean([getattr(s, m)[c] for s in self.images]) for m in METRICS}
            entry['images'] = int(sum(np.isfinite(s.iou[c]) for s in self.images))
            per_class[cname] = entry
        fg = self.class_names[1:]
        mean = {m: _nanmean([per_class[c][m] for c in fg]) for m in METRICS}
        paper = {m: _nanmean([s.paper[m] for s in self.images]) for m in METRICS}
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(axis=0) + self.confusion.sum(axis=1) - tp
        iou = _safe_ratio(tp, union)
        dice = _safe_ratio(2 * tp, union + tp)
        dataset = {'iou': {c: _finite_or_none(v) for c, v in zip(self.class_names, iou)},
                   'dice': {c: _finite_or_none(v) for c, v in zip(self.class_names, dice)},
                   'mean_iou': _finite_or_none(_nanmean(iou[1:])),
                   'mean_dice': _finite_or_none(_nanmean(dice[1:]))}
        return {'task': self.task, 'images': len(self.images), 'class_names': list(self.class_names),
                'per_class': _json_ready(per_class), 'mean': _json_ready(mean),
                'paper': _json_ready(paper), 'dataset': dataset,
                'confusion_matrix': self.confusion.tolist()}


def _finite_or_none(v):
    return float(v) if v is not None and np.isfinite(v) else None


def _json_ready(d):
    """NaN -> None (JSON null) recursively; JSON has no NaN."""
    if isinstance(d, dict):
        return {k: _json_ready(v) for k, v in d.items()}
    if isinstance(d, float):
        return _finite_or_none(d)
    return d
