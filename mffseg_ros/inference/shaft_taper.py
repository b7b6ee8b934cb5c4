"""How a shaft narrows as it recedes: the depth change along it, seen by one camera.

A shaft is a cylinder, so its width in the image is f·D/Z: inversely proportional to its depth. The
ratio of its widths at two places along it is the inverse ratio of their depths, whatever its diameter.
Stereo gives the depth of the tip; the taper tells how the shaft recedes from there. That is the 3-D
axis when stereo cannot give it: a shaft along the baseline lies on its own epipolar lines, so its
points cannot be matched between the eyes.
"""
from dataclasses import dataclass

import numpy as np

SLABS = 8  # cuts across the shaft; the two end ones (rounded or cut ends) are not measured
MIN_SLABS = 3  # measured slabs needed for a slope
MIN_LENGTH_WIDTHS = 2.0  # a shaft shorter than this many widths is too short to show a taper
MAX_RATIO = 6.0  # width ratios beyond this are a measurement failure (an occluded or cut slab), not depth


@dataclass(frozen=True)
class ShaftTaper:
    """Two points on the shaft axis (input px, `near` towards the tip) and the ratio of the shaft's
    widths there: depth(far) = depth(near) * width_ratio."""
    near: tuple
    far: tuple
    width_ratio: float  # width at `near` / width at `far`


def _theil_sen(t, w):
    """(slope, intercept) of w(t): the median of the pairwise slopes, robust to a slab cut by an
    occluding tool or a highlight."""
    i, j = np.triu_indices(len(t), 1)
    slope = float(np.median((w[j] - w[i]) / (t[j] - t[i])))
    return slope, float(np.median(w - slope * t))


def measure_taper(pts, shape, axis):
    """((near u, v), (far u, v), width near / width far), or None when the shaft cannot show a taper
    (too short, too few whole slabs, an implausible ratio). `pts`: the shaft's pixels (Nx2 x, y) in an
    image of `shape`; `axis`: unit axis direction, pointing to the tip. Slabs holding pixels on the
    image border are not measured (the border cuts them)."""
    if len(pts) < 2 * SLABS:
        return None
    centre = pts.mean(axis=0)
    t = (pts - centre) @ axis
    lo, hi = float(t.min()), float(t.max())
    length = hi - lo + 1.0
    if length < MIN_LENGTH_WIDTHS * len(pts) / length:
        return None
    height, width = shape
    on_border = (pts[:, 0] <= 0) | (pts[:, 1] <= 0) | (pts[:, 0] >= width - 1) | (pts[:, 1] >= height - 1)
    step = length / SLABS
    slab = np.minimum(((t - lo) / step).astype(np.int64), SLABS - 1)
    counts = np.bincount(slab, minlength=SLABS)
    cut = np.bincount(slab[on_border], minlength=SLABS) > 0
    measured = [k for k in range(1, SLABS - 1) if counts[k] and not cut[k]]
    if len(measured) < MIN_SLABS:
        return None
    centres = lo + step * (np.array(measured) + 0.5)
    slope, intercept = _theil_sen(centres, counts[measured] / step)
    t_near, t_far = centres.max(), centres.min()  # the axis points to the tip: larger t is nearer it
    w_near, w_far = intercept + slope * t_near, intercept + slope * t_far
    if w_near <= 0 or w_far <= 0 or not 1 / MAX_RATIO <= w_near / w_far <= MAX_RATIO:
        return None
    return tuple(centre + t_near * axis), tuple(centre + t_far * axis), float(w_near / w_far)
