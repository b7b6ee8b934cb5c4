"""Sub-pixel disparity at an instrument's tip, from the two images: block matching along the rectified row.

The two eyes' tips are found separately, each to a pixel or two, and at surgical depths one pixel of
disparity is millimetres of depth (Z² / (f·B): 4 mm at 9 cm for f = 525 px and a 4.35 mm baseline). The
images place the instrument far more precisely: the left instrument's own pixels in a window around its
tip are looked for in the right image along the same row, near the tips' disparity, by zero-mean
normalised cross-correlation (ZNCC), and the peak is fitted with a parabola. Only the instrument's pixels
are compared, so the tissue behind the tip, at another depth, does not pull the match. Rectified images
only: in raw (distorted) images the epipolar lines are not rows.
"""
import cv2
import numpy as np

WINDOW = 0.02  # half-size of the compared window, a fraction of the image width (13 px at 640, 26 at 1280)
SEARCH = 0.016  # search either side of the tips' disparity, a fraction of the width (10 px at 640)
MIN_PIXELS = 20  # instrument pixels in the window needed for a match
MIN_SCORE = 0.5  # a ZNCC peak below this: the two images do not show the window alike; no refinement
_EDGE = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))


def window_mask(instance_map, index, size, rows, cols):
    """Bool mask of the instrument `index` of a network-resolution `instance_map` over the input-image
    window `rows`, `cols` (slices) of an image of `size` (H, W): each input pixel takes the network pixel
    it lies in (nearest), as the instance image does."""
    h, w = instance_map.shape
    ys = np.minimum(((np.arange(rows.start, rows.stop) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(cols.start, cols.stop) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return instance_map[np.ix_(ys, xs)] == index


def tip_disparity(left, right, instance_map, index, tip, disparity, *, min_score=MIN_SCORE):
    """Disparity (u_left - u_right, input px, sub-pixel) of the left image's point `tip` (u, v) on the
    instrument `index` of the left eye's network-resolution `instance_map`, searched near `disparity`
    (the tips' own); None where the images cannot tell (too few instrument pixels, a weak or flat
    correlation, the best match at the end of the search). left, right: rectified HxWx3 images."""
    height, width = left.shape[:2]
    half = max(3, round(WINDOW * width))
    search = max(3, round(SEARCH * width))
    u, v = round(tip[0]), round(tip[1])
    rows = slice(max(v - half, 0), min(v + half + 1, height))
    cols = slice(max(u - half, 0), min(u + half + 1, width))
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return None
    mask = window_mask(instance_map, index, (height, width), rows, cols)
    # The instrument's edge pixels, a mix with the tissue behind it (at another depth) and coarse in a
    # network-resolution mask, are left out where enough pixels remain.
    inner = cv2.erode(mask.view(np.uint8), _EDGE).view(bool)
    mask = inner if np.count_nonzero(inner) >= MIN_PIXELS else mask
    if np.count_nonzero(mask) < MIN_PIXELS:
        return None
    template = left[rows, cols].astype(np.float32)
    if float(template[mask].std(axis=0).max()) < 0.5:
        return None  # a flat window: nothing to match
    centre = round(disparity)
    low, high = max(centre - search, cols.stop - width), min(centre + search, cols.start)  # inside the image
    if high - low < 2:
        return None
    strip = right[rows, cols.start - high:cols.stop - low].astype(np.float32)
    weights = np.repeat(mask[..., None], 3, axis=2).astype(np.float32)
    # ZNCC of the window (its instrument pixels) with the right image moved by high, high - 1, ..., low.
    with np.errstate(invalid='ignore', divide='ignore'):
        scores = cv2.matchTemplate(strip, template, cv2.TM_CCOEFF_NORMED, mask=weights)[0, ::-1]
    scores = np.where(np.isfinite(scores), scores, -np.inf)  # a flat stretch of the right image: no match
    k = int(np.argmax(scores))
    if not 0 < k < len(scores) - 1 or scores[k] < min_score:
        return None  # a weak match, or the best at the end of the search (it did not reach the peak)
    before, peak, after = scores[k - 1], scores[k], scores[k + 1]
    curvature = before - 2 * peak + after
    offset = 0.5 * (before - after) / curvature if curvature < 0 and np.isfinite(curvature) else 0.0
    return float(low + k + offset)
