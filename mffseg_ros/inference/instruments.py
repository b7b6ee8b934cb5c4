"""Instruments in one image: instances of the instrument mask, voted types, tips and shaft axes.

An instance is one instrument: a connected region of the instrument (binary) mask, so per-pixel type
noise cannot shatter it. Instruments that touch or cross form one region; it is split when its parts
show more than one instrument (more wrist/clasper "heads" or more separate shafts than one):
each instrument is modelled as a line (its shaft axis, ending at its distal end) and every pixel of the
region goes to the line it lies closest to, a pixel beyond a line's distal end paying that distance.
The lines come from the separate shafts when there are two or more (large, reliably segmented),
else from the heads and the shaft pixels next to each.
Shafts are straight, so crossing shafts stay with their own axis, and jaws that touch stay with their
own shaft.

Every split piece enters the view (shafts come in from outside it): a piece that does not, such as
articulated jaws labelled shaft, rejoins the instrument it touches.

The tip (`instrument_tip`, also used to make the synthetic ground truth, so both mean the same point):
the centroid of the instrument's jaws, i.e. its clasper pixels plus whatever lies beyond its wrist
(`jaw_parts`; their largest connected piece); without claspers, of its wrist pixels; without either,
the distal end of its shaft (the end away from where the shaft enters the view). A centroid that falls
outside the part (open jaws) moves to the nearest pixel of the part, so a tip is always on its
instrument. Coordinates: u = column, v = row, pixel centres at integers.
"""
import math
from dataclasses import dataclass

import cv2
import numpy as np

from mffseg_ros.inference.results import to_input_coords
from mffseg_ros.inference.shaft_taper import ShaftTaper, measure_taper
from mffseg_ros.model.classes import PART_CLASPERS, PART_SHAFT, PART_WRIST

UNKNOWN_TYPE = 255  # type id of an instrument whose type vote is below the confidence threshold
DEFAULT_MIN_AREA = 200  # input px; below this a region is noise (also the node default and the ground truth)
DEFAULT_MIN_PART_AREA = 10  # input px of claspers/wrist needed before they define the tip
# Mean P(instrument) over a region below which it is no instrument: on real video (Cholec80 VID03, six
# ways) and synthetic bags every true instrument scored 0.73 or more, half the false ones less (tissue
# the model half believes is metal). docs/TIPS_AND_STEREO.md has the figures.
DEFAULT_MIN_SCORE = 0.65
# Tip source -> code published in the tips cloud: the part that gave the tip (0: the whole instance).
SOURCE_CODES = {'claspers': PART_CLASPERS, 'wrist': PART_WRIST, 'shaft_end': PART_SHAFT, 'instance_end': 0}
SOURCE_NAMES = {code: name for name, code in SOURCE_CODES.items()}
_MIN_AXIS_PIXELS = 6
# Gaps of up to 4 network pixels inside one instrument (jaws cut off from the wrist by a thin
# misclassified band, a shaft broken by a highlight) are bridged before regions are formed.
_BRIDGE = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
# Shafts within asin(0.25) = 14.5 degrees of the image rows get a taper: stereo._axis_3d needs it below
# 0.12 (rectified rows are the epipolar lines; the margin covers rectification's small rotations).
_TAPER_MAX_SIN = 0.25
# Jaws are about as large as the wrist they hang on (a vessel sealer's long jaws up to about twice): more
# than this many wrist areas of non-clasper pixels beyond it is no jaw taken for shaft but tissue taken
# for instrument, joined to the tool (synthetic bags: 1 already lost gold jaws' tips on seed 11, 2.5
# kept more false tips on seed 9; docs/TIPS_AND_STEREO.md).
_MAX_JAWS_PER_WRIST = 2.0
# How close to the field stop (network pixels) a region's pixels are counted as lying along its edge.
_FIELD_STOP_REACH = cv2.getStructuringElement(cv2.MORPH_RECT, (9, 9))


@dataclass
class Instrument:
    """One instrument in one image. Positions are input-image pixels."""
    index: int  # its value in the frame's network-resolution instance map
    area_px: float  # input pixels
    score: float  # mean P(instrument) over its pixels
    type_votes: np.ndarray | None  # mean P(type | instrument) over its pixels, types 1..T (None: no type head)
    tip: tuple  # (u, v)
    source: str  # 'claspers' | 'wrist' | 'shaft_end' | 'instance_end'
    axis_point: tuple  # (u, v): a point on the shaft axis (the centroid of the shaft pixels)
    axis_dir: tuple  # (du, dv): unit direction of the shaft axis, pointing towards the tip
    shaft_taper: ShaftTaper | None = None  # how the shaft narrows along its axis (depth change, for 3-D)


@dataclass
class _Pixels:
    """A region's pixels, found once: crop coordinates in np.nonzero's raster order. A boolean selection
    of them lists a subset in the order np.nonzero of the subset's mask would, so every mean and sum
    over it is bit for bit the one computed from that mask."""
    ys: np.ndarray
    xs: np.ndarray
    pts: np.ndarray  # Nx2 float64 (x, y)

    @classmethod
    def of(cls, mask):
        ys, xs = np.nonzero(mask)
        return cls(ys, xs, np.column_stack([xs, ys]).astype(np.float64))

    def image(self, selection, shape):
        """Bool mask (of `shape`, the crop's) of the selected pixels."""
        out = np.zeros(shape, bool)
        out[self.ys[selection], self.xs[selection]] = True
        return out


def _pieces(mask):
    """(label image, [(label, area)]) of the 8-connected components of `mask` (bool) once small gaps are
    bridged. The areas are the bridged components' (what sizes a piece). Labelled in a crop around the
    pixels: at even offsets OpenCV's 2x2-block labelling numbers the components as on the whole mask."""
    labels = np.zeros(mask.shape, np.int32)
    crop, origin = _around(mask, align=2)
    if crop is None:
        return labels, []
    x0, y0 = origin
    bridged = cv2.morphologyEx(crop, cv2.MORPH_CLOSE, _BRIDGE)
    count, crop_labels, stats, _ = cv2.connectedComponentsWithStats(bridged, connectivity=8)
    labels[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop_labels
    return labels, [(k, int(stats[k, cv2.CC_STAT_AREA])) for k in range(1, count)]


# Nx2 pixel arrays: numpy works along their 2-wide rows (pts.mean(axis=0), pts - point, pts[mask]) ten
# times slower than along their columns, so these helpers take the columns apart. Same values: the
# coordinates are integers, so their sums are exact in any order.
def _mean(pts):
    """pts.mean(axis=0) of Nx2 pixel coordinates."""
    return np.array([pts[:, 0].sum(), pts[:, 1].sum()]) / len(pts)


def _centred(pts, point):
    """pts - point, for Nx2 `pts`."""
    out = np.empty_like(pts)
    np.subtract(pts[:, 0], point[0], out=out[:, 0])
    np.subtract(pts[:, 1], point[1], out=out[:, 1])
    return out


def _squared_distances(pts, point):
    """((pts - point) ** 2).sum(axis=1), for Nx2 `pts`."""
    d = _centred(pts, point)
    return d[:, 0] ** 2 + d[:, 1] ** 2


def _select(pts, selection):
    """pts[selection], for Nx2 `pts` and a boolean `selection`."""
    return pts.compress(selection, axis=0)


def _principal_axis(pts):
    """(centre, unit major axis) of Nx2 points."""
    centre = _mean(pts)
    if len(pts) < 2:
        return centre, np.array([1.0, 0.0])
    d = _centred(pts, centre)
    sxx, syy, sxy = float(d[:, 0] @ d[:, 0]), float(d[:, 1] @ d[:, 1]), float(d[:, 0] @ d[:, 1])
    angle = 0.5 * math.atan2(2.0 * sxy, sxx - syy)  # the major axis of the 2x2 scatter matrix
    return centre, np.array([math.cos(angle), math.sin(angle)])


def _on_border(pts, shape, origin):
    """Which of the pixels `pts` (Nx2, in a crop at `origin` of an image of `shape`) lie on the image border."""
    height, width = shape
    x = pts[:, 0] + origin[0]
    y = pts[:, 1] + origin[1]
    return (x <= 0.5) | (y <= 0.5) | (x >= width - 1.5) | (y >= height - 1.5)


def _entry_point(pts, shape, origin):
    """Where the instrument enters the view: the mean of its pixels on the image border, or None."""
    on_border = _on_border(pts, shape, origin)
    return _mean(_select(pts, on_border)) if on_border.any() else None


def distal_end(pts, shape, origin=(0, 0)):
    """The distal end of an elongated blob (Nx2 x, y in a crop at `origin` of an image of `shape`):
    the mean of its last slab along the principal axis, at the end away from where it enters the view
    (its border pixels; without any, the end farther from the image border)."""
    centre, axis = _principal_axis(pts)
    if len(pts) < 2:
        return centre
    proj = _centred(pts, centre) @ axis
    lo, hi = proj.min(), proj.max()
    band = max(1.5, 0.05 * (hi - lo))
    ends = [_mean(_select(pts, proj <= lo + band)), _mean(_select(pts, proj >= hi - band))]
    entry = _entry_point(pts, shape, origin)
    if entry is not None:
        return ends[int(np.argmax([np.hypot(*(e - entry)) for e in ends]))]
    height, width = shape
    border = [min(x + origin[0], y + origin[1], width - 1 - x - origin[0], height - 1 - y - origin[1])
              for x, y in ends]
    return ends[int(np.argmax(border))]  # tie -> the first end, deterministic


def _snap(point, pts):
    """`point` if it lies on one of the pixels `pts` (Nx2), else the nearest of them."""
    d2 = _squared_distances(pts, point)
    k = int(np.argmin(d2))
    return point if d2[k] <= 0.5 else pts[k]


def _main_part(pix, selection, crop_shape):
    """Pixels (Nx2 x, y) of the largest connected piece of a part (the `selection` of an instrument's
    pixels `pix`, in a crop of `crop_shape`), small gaps bridged (two open jaws are one piece): a stray
    pixel of the part elsewhere on the instrument must not pull the tip. Labelled in the box _around
    would cut from the part's mask, drawn from its pixel list."""
    ys, xs = pix.ys[selection], pix.xs[selection]
    if not len(ys):
        return np.zeros((0, 2))
    pad = _BRIDGE.shape[0]
    x0, y0 = max(int(xs.min()) - pad, 0), max(int(ys.min()) - pad, 0)
    x1, y1 = min(int(xs.max()) + 1 + pad, crop_shape[1]), min(int(ys.max()) + 1 + pad, crop_shape[0])
    crop = np.zeros((y1 - y0, x1 - x0), np.uint8)
    crop[ys - y0, xs - x0] = 1
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        cv2.morphologyEx(crop, cv2.MORPH_CLOSE, _BRIDGE), connectivity=8)
    if count <= 1:
        return np.zeros((0, 2))
    keep = labels[ys - y0, xs - x0] == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return np.column_stack([xs[keep], ys[keep]]).astype(np.float64)


def _around(mask, align=1):
    """(uint8 crop of `mask` around its pixels, (x0, y0) of the crop, multiples of `align`) or (None, None)
    when empty. The margin (the bridge kernel's size) is what a closing with _BRIDGE reaches beyond the
    pixels, so filters on the crop give exactly what they give on the whole mask, at a fraction of the cost."""
    m = mask.view(np.uint8)
    x, y, w, h = cv2.boundingRect(m)
    if not w:
        return None, None
    pad = _BRIDGE.shape[0]
    x0, y0 = max(x - pad, 0) // align * align, max(y - pad, 0) // align * align
    return m[y0:y + h + pad, x0:x + w + pad], (x0, y0)


def jaw_parts(mask, parts, *, shape=None, origin=(0, 0), min_part_area=DEFAULT_MIN_PART_AREA):
    """`parts` with the instrument's jaws labelled claspers: every pixel of `mask` beyond the far edge
    of its wrist (along the instrument's axis, pointing away from where it enters the view) that is not
    wrist, unless the model's own claspers are plainly the jaws (see _jaw_parts) or there is more of it
    than jaws could be (_MAX_JAWS_PER_WRIST: tissue taken for instrument). Jaws are distal to
    the wrist whatever a model calls them (it may take gold jaws for shaft, and put its few clasper
    pixels on the wrist's pulleys). On exact label maps nothing but claspers lies beyond the wrist, so
    ground-truth parts come back unchanged."""
    shape = mask.shape if shape is None else shape
    return _jaw_parts(mask, parts, _Pixels.of(mask), shape, origin, min_part_area)


def _jaw_parts(mask, parts, pix, shape, origin, min_part_area):
    """jaw_parts, given the pixels of `mask`."""
    part_at = parts[pix.ys, pix.xs]
    wrist = _main_part(pix, part_at == PART_WRIST, mask.shape)
    if len(wrist) < min_part_area:
        return parts
    centre = _mean(wrist)
    _, axis = _principal_axis(pix.pts)
    entry = _entry_point(pix.pts, shape, origin)
    if entry is None:  # no border pixels: the wrist lies away from the mass of the shaft
        shaft = part_at == PART_SHAFT
        entry = np.array([pix.xs[shaft].mean(), pix.ys[shaft].mean()]) if shaft.any() else _mean(pix.pts)
    if (centre - entry) @ axis < 0:
        axis = -axis
    along = _centred(pix.pts, centre) @ axis
    beyond = (along > (_centred(wrist, centre) @ axis).max()) & (part_at != PART_WRIST)
    unlabelled_jaws = np.count_nonzero(beyond & (part_at != PART_CLASPERS))  # beyond, not called claspers
    if not beyond.any() or unlabelled_jaws > _MAX_JAWS_PER_WRIST * len(wrist):
        return parts  # nothing beyond the wrist, or too much to be jaws
    claspers = _main_part(pix, part_at == PART_CLASPERS, mask.shape)
    if (len(claspers) >= max(min_part_area, len(wrist))
            and unlabelled_jaws > len(claspers)
            and (_centred(claspers, centre) @ axis).max() >= along.max() - max(2.0, 0.25 * math.sqrt(len(claspers)))):
        # The model's own claspers reach the distal end and are no smaller than its wrist, and more
        # than as much again lies between them and its wrist: that is no jaw base taken for shaft but
        # the front of a wrist it mostly took for shaft, the "wrist" it found a sliver at the back. Its
        # claspers are the jaws. (A few clasper pixels at the tip of jaws it took for wrist or shaft are
        # smaller than the wrist: the rule finds those jaws.)
        return parts
    out = parts.copy()
    out[pix.ys[beyond], pix.xs[beyond]] = PART_CLASPERS
    return out


def instrument_tip(mask, parts, *, shape=None, origin=(0, 0), min_part_area=DEFAULT_MIN_PART_AREA, jaws_done=False):
    """(u, v, source) of one instrument: `mask` its pixels, `parts` the part labels (same crop, or None),
    `origin` the crop's top-left corner in an image of `shape` (default: the crop is the image).
    u, v are in the crop's coordinates plus `origin`. jaws_done: `parts` already went through jaw_parts."""
    shape = mask.shape if shape is None else shape
    pix = _Pixels.of(mask)
    if parts is not None and not jaws_done:
        parts = _jaw_parts(mask, parts, pix, shape, origin, min_part_area)
    part_at = parts[pix.ys, pix.xs] if parts is not None else None
    return _tip(mask, parts, pix, part_at, shape, origin, min_part_area)


def _tip(mask, parts, pix, part_at, shape, origin, min_part_area):
    """instrument_tip, given the pixels of `mask` and their labels in `parts` (jaws done; None: no parts)."""
    shaft = pix.pts[:0]
    if parts is not None:
        for part, source in ((PART_CLASPERS, 'claspers'), (PART_WRIST, 'wrist')):
            pts = _main_part(pix, part_at == part, mask.shape)
            if len(pts) >= min_part_area:
                u, v = _snap(_mean(pts), pts)
                return u + origin[0], v + origin[1], source
        shaft = _select(pix.pts, part_at == PART_SHAFT)
    source = 'shaft_end'
    if len(shaft) == 0:  # no part labels here: the whole instance's shape
        shaft = pix.pts
        source = 'instance_end'
    u, v = _snap(distal_end(shaft, shape, origin), pix.pts)
    return u + origin[0], v + origin[1], source


def shaft_axis(mask, parts, tip):
    """(point, unit direction towards `tip`) of the instrument's shaft axis (crop coordinates): the
    principal axis of its shaft pixels (of all its pixels when the shaft is too small)."""
    pix = _Pixels.of(mask)
    return _shaft_axis(pix, parts[pix.ys, pix.xs] if parts is not None else None, tip)


def _shaft_axis(pix, part_at, tip):
    """shaft_axis, given the instrument's pixels and their part labels (or None)."""
    pts = _select(pix.pts, part_at == PART_SHAFT) if part_at is not None else pix.pts[:0]
    if len(pts) < _MIN_AXIS_PIXELS:
        pts = pix.pts
    centre, axis = _principal_axis(pts)
    if (np.asarray(tip) - centre) @ axis < 0:
        axis = -axis
    return centre, axis


# --- splitting touching and crossing instruments ------------------------------------------------
def _head_line(head, shaft_pts, blob_centre):
    """(point, direction to the tip, extent beyond the point) of an instrument seen by its head
    (wrist + claspers pixels, Nx2): its axis from the head and the shaft pixels nearest to it (as many
    as the head has: its own shaft, not a neighbour's further away)."""
    centre = _mean(head)
    near = shaft_pts
    if len(shaft_pts) > 2 * len(head):
        d2 = _squared_distances(shaft_pts, centre)
        near = shaft_pts[np.argpartition(d2, 2 * len(head))[:2 * len(head)]]
    if len(near) >= _MIN_AXIS_PIXELS:
        _, axis = _principal_axis(np.vstack([near, head]))
        if (centre - _mean(near)) @ axis < 0:
            axis = -axis
    else:
        _, axis = _principal_axis(head)
        if (centre - blob_centre) @ axis < 0:
            axis = -axis
    extent = float((_centred(head, centre) @ axis).max())
    return centre, axis, extent


def _shaft_line(shaft, shape, origin):
    """(distal end, direction to it, 0) of an instrument seen by its shaft pixels (Nx2)."""
    end = distal_end(shaft, shape, origin)
    centre, axis = _principal_axis(shaft)
    if (end - centre) @ axis < 0:
        axis = -axis
    return end, axis, 0.0


def _gap_has_head(a, b, axis, parts):
    """Whether wrist or clasper pixels lie between the facing ends of two shaft pieces (Nx2 each) on one
    line: then they are two instruments meeting head on, not one shaft hidden behind another tool."""
    pa, pb = a @ axis, b @ axis
    if pa.mean() > pb.mean():
        a, b, pa, pb = b, a, pb, pa
    start, end = a[np.argmax(pa)], b[np.argmin(pb)]
    steps = int(np.ceil(np.linalg.norm(end - start))) + 1
    samples = np.round(start + np.linspace(0, 1, steps)[:, None] * (end - start)).astype(int)
    # Mostly wrist/jaw pixels: two heads meeting. A few among the occluding shaft's pixels are noise.
    return bool((parts[samples[:, 1], samples[:, 0]] >= PART_WRIST).mean() >= 0.5)


def _merge_collinear(shafts, pts, parts, max_angle_deg=12.0):
    """Shaft pieces (selections of the region's pixels `pts`) that lie on one line (a shaft cut in two
    by another tool crossing in front of it) are one shaft."""
    pieces = [_select(pts, s) for s in shafts]
    shafts = list(shafts)
    merged = True
    while merged and len(shafts) > 1:
        merged = False
        lines = [_principal_axis(p) for p in pieces]
        for i in range(len(shafts)):
            for j in range(i + 1, len(shafts)):
                (_, ai), (_, aj) = lines[i], lines[j]
                if abs(ai @ aj) < math.cos(math.radians(max_angle_deg)):
                    continue
                big, small = (i, j) if len(pieces[i]) >= len(pieces[j]) else (j, i)
                c_big, a_big = lines[big]
                extent = np.ptp(pieces[big] @ a_big) + 1.0
                half_width = 0.5 * len(pieces[big]) / extent  # area / length of a straight band
                rel = lines[small][0] - c_big
                if (abs(rel[0] * a_big[1] - rel[1] * a_big[0]) <= max(half_width, 2.0)
                        and not _gap_has_head(pieces[i], pieces[j], a_big, parts)):
                    shafts[i] = shafts[i] | shafts[j]
                    pieces[i] = np.vstack([pieces[i], pieces[j]])
                    del shafts[j], pieces[j]
                    merged = True
                    break
            if merged:
                break
    return shafts


def _band(pts):
    """(centre, unit axis, length, width) of a piece (Nx2 pixels) seen as a straight band: its principal
    axis, its extent along it, and its area over that length."""
    centre, axis = _principal_axis(pts)
    length = np.ptp(pts @ axis) + 1.0
    return centre, axis, length, len(pts) / length


def _is_band(band, ratio=2.5):
    """Whether a _band (centre, axis, length, width) is at least `ratio` times longer than wide (as a shaft is)."""
    _, _, length, width = band
    return length >= ratio * width


def _elongated(pts, ratio=2.5):
    """Whether a piece (Nx2 pixels) is a band at least `ratio` times longer than wide."""
    return len(pts) >= 2 and _is_band(_band(pts), ratio)


def _drop_slivers(shafts, pts, ratio=0.35):
    """Shaft pieces (selections of `pts`) much thinner than the widest one are a highlight or an edge of
    that shaft labelled apart, not another instrument (instruments in one view have similar shaft widths)."""
    if len(shafts) < 2:
        return shafts
    widths = [_band(_select(pts, s))[3] for s in shafts]  # mean width: area over length
    return [s for s, w in zip(shafts, widths) if w >= ratio * max(widths)]


def _two_heads(a, b, min_angle_deg=30.0, off_line=1.5):
    """Whether head pieces `a` and `b` (Nx2 pixels) lying next to each other are two instruments' heads, not
    one head broken by noise: both are bands (wrist and jaws along the instrument's axis), their axes
    differ by more than `min_angle_deg`, and neither lies on the other's axis (its centre more than
    `off_line` widths off it). The pieces of one broken head share one axis; a noisy parts map also
    cuts bands across a head, which lie on the main piece's axis (seed-11 bag: at most 1.3 widths
    off, while the demo's crossing heads are 51-56 degrees apart and 2.5 widths or more off).
    Each piece's own principal axis is used, not its _head_line: a shaft crossing next to the heads
    tilts those towards each other (55 degrees apart measured as 28 in the generated crossing test)."""
    if len(a) < 2 or len(b) < 2:
        return False
    band_a, band_b = _band(a), _band(b)
    if not (_is_band(band_a) and _is_band(band_b)):
        return False  # a blob has no axis of its own to tell it apart
    (centre_a, axis_a, _, width_a), (centre_b, axis_b, _, width_b) = band_a, band_b
    if abs(axis_a @ axis_b) >= math.cos(math.radians(min_angle_deg)):
        return False
    for centre, axis, width, other in ((centre_a, axis_a, width_a, centre_b), (centre_b, axis_b, width_b, centre_a)):
        rel = other - centre
        if abs(rel[0] * axis[1] - rel[1] * axis[0]) <= off_line * width:
            return False
    return True


def _distinct_heads(heads, pix, shape, ratio=0.2):
    """Heads (wrist + claspers pieces, selections of the region's pixels `pix`; `shape`: the crop's) that
    can stand for an instrument: at least `ratio` of the largest one (smaller pieces are specks of a
    noisy parts map), and not a piece lying next to a larger kept head (closer than half that head's
    size: one head seen in pieces) unless the two are two instruments' heads on different axes
    (`_two_heads`: crossing tools whose wrists nearly touch)."""
    sizes = [np.count_nonzero(h) for h in heads]
    largest = max(sizes, default=0)
    kept, distance_maps = [], {}  # distance maps of kept heads, made when a smaller piece first needs one
    for i in sorted(range(len(heads)), key=sizes.__getitem__, reverse=True):  # stable, as sorting the heads
        if sizes[i] < ratio * largest:
            break
        near = False
        for k in kept:
            if k not in distance_maps:
                distance_maps[k] = cv2.distanceTransform((~pix.image(heads[k], shape)).view(np.uint8),
                                                         cv2.DIST_L2, 3)
            gap = distance_maps[k][pix.ys[heads[i]], pix.xs[heads[i]]].min()  # pixels from this piece to head k
            near = near or (gap < 0.5 * math.sqrt(sizes[k])
                            and not _two_heads(_select(pix.pts, heads[k]), _select(pix.pts, heads[i])))
        if not near:
            kept.append(i)
    return [heads[k] for k in kept]


def _one_per_shaft_line(heads, shaft, pts, max_angle_deg=30.0):
    """Heads (selections of `pts`) on the line of the region's only shaft (Nx2; centres within its width
    of its axis) are one instrument's head, and only the largest stays: an instrument's wrist and jaws
    lie on its own axis, so a model that labels pale jaws partly as shaft cuts one head in pieces along
    it, and a grasper's two prongs are two pieces side by side; each used to make an instrument. Kept
    as well: heads off the line, and heads at least half the largest's size that lie across the shaft
    (more than `max_angle_deg` off: another tool's head resting on it). Not told apart: two tools in a
    narrow V from one point of the border, whose shafts form one piece (their heads look like prongs)."""
    if len(heads) < 2:
        return heads
    centre, axis, _, width = _band(shaft)
    head_pts = [_select(pts, h) for h in heads]
    bands = [_band(p) if len(p) >= 2 else None for p in head_pts]
    across = [b is not None and _is_band(b) and abs(b[1] @ axis) < math.cos(math.radians(max_angle_deg))
              for b in bands]
    on_line = []
    for k, p in enumerate(head_pts):
        rel = _mean(p) - centre
        if abs(rel[0] * axis[1] - rel[1] * axis[0]) <= max(width, 2.0):
            on_line.append(k)
    along = [k for k in on_line if not across[k]]
    if not along:
        return heads
    largest = max(along, key=lambda k: len(head_pts[k]))
    return [h for k, h in enumerate(heads)
            if k == largest or k not in on_line or (across[k] and len(head_pts[k]) >= 0.5 * len(head_pts[largest]))]


def _mostly_head(heads, shafts):
    """Whether a region with several shaft pieces is one instrument seen mostly as its head: a single head
    larger than all its shaft pieces together. Those are specks and edges inside the tool (real graspers
    with long jaws, most of them labelled jaws), not the shafts of two tools, which are long bands."""
    return len(heads) == 1 and sum(np.count_nonzero(s) for s in shafts) < np.count_nonzero(heads[0])


def split_region(mask, parts, *, shape, origin, min_part_area, min_area):
    """Pixel masks (crop-sized) of the instruments in one connected instrument region."""
    if parts is None:
        return [mask]
    # A head or shaft that can separate instruments is a real piece (a quarter of the smallest
    # instrument), not a few stray pixels of a noisy parts map.
    min_piece = max(min_part_area, min_area / 4)
    head_labels, heads = _pieces(mask & (parts >= PART_WRIST))
    shaft_labels, shafts = _pieces(mask & (parts == PART_SHAFT))
    heads = [k for k, area in heads if area >= min_piece]
    shafts = [(k, area) for k, area in shafts if area >= min_piece]
    if max(len(heads), len(shafts)) < 2:  # the filters below only ever drop pieces: one instrument
        return [mask]
    pix = _Pixels.of(mask)
    pts = pix.pts
    # Pieces as selections of the region's pixels (the bridge's own pixels are not the region's).
    head_at, shaft_at = head_labels[pix.ys, pix.xs], shaft_labels[pix.ys, pix.xs]
    heads = [head_at == k for k in heads]
    on_border = _on_border(pts, shape, origin)
    if shafts:  # a shaft fragment a fifth the size of the main one is a segmentation hole, not a tool
        largest = max(area for _, area in shafts)
        shafts = _merge_collinear([shaft_at == k for k, area in shafts if area >= 0.2 * largest], pts, parts)
        shafts = [s for s in shafts if _elongated(_select(pts, s))]  # a shaft is a long band; a blob is noise
        shafts = _drop_slivers(shafts, pts)
        # Shafts come in from outside the view: a piece that does not reach the border (jaws labelled
        # shaft beyond the wrist) seeds no instrument of its own while another piece does.
        shafts = [s for s in shafts if on_border[s].any()] or shafts
    heads = _distinct_heads(heads, pix, mask.shape)
    if len(shafts) == 1:
        heads = _one_per_shaft_line(heads, _select(pts, shafts[0]), pts)
    if max(len(heads), len(shafts)) < 2 or _mostly_head(heads, shafts):
        return [mask]
    if len(shafts) >= 2:
        lines = [_shaft_line(_select(pts, s), shape, origin) for s in shafts]
    else:
        shaft_pts = _select(pts, parts[pix.ys, pix.xs] == PART_SHAFT)
        centre = _mean(pts)
        lines = [_head_line(_select(pts, h), shaft_pts, centre) for h in heads]
    costs = []
    for point, axis, extent in lines:
        rel = _centred(pts, point)
        along = rel @ axis
        across = np.abs(rel[:, 0] * axis[1] - rel[:, 1] * axis[0])
        costs.append(across + np.maximum(0.0, along - extent))
    owner = np.argmin(np.stack(costs, axis=1), axis=1)
    if len(shafts) >= 2:
        # Wrist and jaws sit beyond their own shaft's distal end: each goes to the nearest shaft end
        # (a thick neighbouring shaft may pass closer to them than their own thin axis does).
        head = parts[pix.ys, pix.xs] >= PART_WRIST
        ends = np.array([point for point, _, _ in lines])
        owner[head] = np.argmin(((pts[head, None, :] - ends[None]) ** 2).sum(axis=2), axis=1)
    owned = [o for o in (owner == k for k in range(len(lines))) if np.count_nonzero(o) >= min_area]
    regions = [pix.image(o, mask.shape) for o in owned]
    return _rejoin_inner(regions, [bool(on_border[o].any()) for o in owned]) or [mask]


def _rejoin_inner(regions, enters):
    """Split regions that do not reach the image border (`enters`: which do) join the region they touch
    most: every instrument enters the view, so such a piece is part of a neighbour (the jaws of an
    articulated wrist, labelled shaft and bent away from its axis), not an instrument of its own."""
    outer = [r for r, e in zip(regions, enters) if e]
    if not outer or len(outer) == len(regions):
        return regions
    outer = [r.copy() for r in outer]
    for inner in (r for r, e in zip(regions, enters) if not e):
        ring = cv2.dilate(inner.view(np.uint8), _BRIDGE).view(bool)
        contact = [np.count_nonzero(ring & r) for r in outer]
        if max(contact) > 0:
            outer[int(np.argmax(contact))] |= inner
        else:
            outer.append(inner)
    return outer


def _attach_orphans(found, parts, shape, min_part_area, min_area, stop_near=None, reach=0.08, orphan_area=4.0):
    """Regions that come into view (touching the image border or the field stop, `stop_near`) are
    instruments; so are large bands with a shaft (`orphan_area` times the smallest instrument). The
    others may be pieces of one: jaws cut off from their wrist by a segmentation gap join the instrument
    nearest to them (within `reach` of the image diagonal). Farther ones stay instruments of their own
    when they are long bands of `orphan_area` times the smallest instrument (a tool whose shaft is hidden
    by tissue, all of it labelled jaws: real laparoscopic graspers); blobs and small slivers are dropped
    (dark tissue, a vessel or a highlight taken for metal)."""
    height, width = shape
    cache = {}

    def pixels(f):
        if id(f) not in cache:
            _, _, region, x0, y0 = f
            ys, xs = np.nonzero(region)
            cache[id(f)] = np.column_stack([xs + x0, ys + y0])
        return cache[id(f)]

    shapes = {}

    def long_band(f):
        """Whether a region is a long band, found once (anchoring and the far orphans both ask)."""
        if id(f) not in shapes:
            shapes[id(f)] = _elongated(_Pixels.of(f[2]).pts)
        return shapes[id(f)]

    def anchored(f):
        _, _, region, x0, y0 = f
        h, w = region.shape
        # On the image border: a pixel in an edge row or column of its box that lies on that border.
        if ((x0 == 0 and region[:, 0].any()) or (y0 == 0 and region[0].any())
                or (x0 + w == width and region[:, -1].any()) or (y0 + h == height and region[-1].any())):
            return True
        if stop_near is not None and np.count_nonzero(stop_near[y0:y0 + h, x0:x0 + w] & region):
            return True  # it comes in across the field stop
        return (f[0] >= orphan_area * min_area
                and np.count_nonzero((parts[y0:y0 + h, x0:x0 + w] == PART_SHAFT) & region) >= min_part_area
                and long_band(f))

    anchors = [anchored(f) for f in found]
    keep = [f for f, a in zip(found, anchors) if a]
    orphans = [f for f, a in zip(found, anchors) if not a]
    bands = {id(f): f for f in orphans if f[0] >= orphan_area * min_area and long_band(f)}
    if not orphans or not keep:
        return keep + list(bands.values())
    limit = reach * math.hypot(height, width)
    merged = {id(f): [f] for f in keep}
    for orphan in orphans:
        centre = pixels(orphan).mean(axis=0)
        gaps = [np.sqrt(((pixels(f) - centre) ** 2).sum(axis=1).min()) for f in keep]
        best = int(np.argmin(gaps))
        if gaps[best] <= limit:
            merged[id(keep[best])].append(orphan)
        elif id(orphan) in bands:
            merged[id(orphan)] = [orphan]
    out = []
    for f in keep + [b for b in bands.values() if id(b) in merged]:
        group = merged[id(f)]
        if len(group) == 1:
            out.append(f)
            continue
        x0 = min(g[3] for g in group)
        y0 = min(g[4] for g in group)
        x1 = max(g[3] + g[2].shape[1] for g in group)
        y1 = max(g[4] + g[2].shape[0] for g in group)
        region = np.zeros((y1 - y0, x1 - x0), bool)
        for _, _, r, gx, gy in group:
            region[gy - y0:gy - y0 + r.shape[0], gx - x0:gx - x0 + r.shape[1]] |= r
        row, col = divmod(int(region.argmax()), region.shape[1])
        out.append((int(region.sum()), (y0 + row, x0 + col), region, x0, y0))
    return out


def _taper(pix, part_at, shape, origin, axis, size):
    """The shaft's ShaftTaper in input pixels, or None: no parts, no measurable taper, or a shaft far from
    the image rows (stereo gives its axis; the taper is its fallback for shafts along the baseline)."""
    if part_at is None or abs(axis[1]) > _TAPER_MAX_SIN:
        return None
    taper = measure_taper(_select(pix.pts, part_at == PART_SHAFT) + origin, shape, axis)
    if taper is None:
        return None
    near, far = to_input_coords([taper[0], taper[1]], shape, size)
    return ShaftTaper(tuple(near), tuple(far), taper[2])


def _near_field_stop(stop):
    """Pixels within 4 network pixels of the field stop (`stop`: its near-black pixels that are not
    instrument), or None when there is none."""
    return cv2.dilate(stop.view(np.uint8), _FIELD_STOP_REACH).view(bool) if stop.any() else None


def _share_in(f, mask):
    """The share of a found region's pixels (f: (area, first pixel, region, x0, y0)) that `mask` holds."""
    _, _, region, x0, y0 = f
    h, w = region.shape
    return np.count_nonzero(mask[y0:y0 + h, x0:x0 + w] & region) / f[0]


def _off_the_field_stop(found, near, max_share=0.9):
    """Regions that run along the edge of the field stop, `max_share` or more of their pixels `near` it,
    go: instruments come into view across the field stop, not along it, while its dark, blurred rim is
    what a model that learnt near-black shafts takes for a thin one. (Synthetic bags: such bands have all
    their pixels there, true instruments at most 11 %.)"""
    return [f for f in found if _share_in(f, near) < max_share]


def _not_black(found, dark, max_share=0.9):
    """Regions with `max_share` or more of their pixels `dark` (near-black input) go: a region black
    through and through is a letterbox bar or the field stop itself taken for a black shaft. Real shafts,
    black ones included, have highlights and lit sides: at most 7 % of their pixels were near-black on
    synthetic bags and real laparoscopic video, such bars 100 %."""
    return [f for f in found if _share_in(f, dark) < max_share]


def _region_means(planes, box, region):
    """Mean of each of `planes` (C x H x W float32) over the pixels `region` (bool, the shape of the `box`
    slice): cv2.mean, which sums in double within the box (no gathered copy of the pixels), rounded to
    float32 as the planes are (its sum x 1/count makes a mean of ones 0.9999999999999999). NaN where a
    plane has a NaN there."""
    mask = region.view(np.uint8)
    return np.array([cv2.mean(plane[box], mask=mask)[0] for plane in planes], np.float32).astype(np.float64)


def _type_votes(type_probs, box, region):
    """Mean P(type | instrument) over the instrument's finite pixels, types 1..T (NaN for a type none of
    whose pixels is finite: a network that gives NaN somewhere must not lose the whole vote)."""
    votes = _region_means(type_probs, box, region)
    if np.isfinite(votes).all():
        return votes
    probs = type_probs[(slice(None), *box)][:, region]
    finite = np.isfinite(probs)
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(finite, probs, 0).sum(axis=1, dtype=np.float64) / finite.sum(axis=1)


def find_instruments(result, *, min_area=DEFAULT_MIN_AREA, min_part_area=DEFAULT_MIN_PART_AREA,
                     min_score=DEFAULT_MIN_SCORE, geometry_only=False):
    """(instruments, instance map) of one SegmentationResult (inference/results.py), computed on the
    network's grid. The instance map (uint16, network resolution) holds each instrument's `index`;
    instruments come largest first. Areas are in input pixels, as are tips and axes. Regions whose mean
    P(instrument) is below `min_score` are no instruments. geometry_only: regions, tips and axes only,
    what stereo matching takes from the second eye (type_votes None, score NaN, no shaft taper, no
    region dropped for its score: an extra candidate there is matched to nothing)."""
    fg = result.net_binary
    parts = result.net_parts
    shape = fg.shape
    sx, sy = result.scale
    min_area_net = max(1.0, min_area / (sx * sy))
    min_part_net = max(1.0, min_part_area / (sx * sy))
    # Bridged only when parts can split the joined region again (two tools a few pixels apart).
    bridged = cv2.morphologyEx(fg.view(np.uint8), cv2.MORPH_CLOSE, _BRIDGE) if parts is not None else fg.view(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(bridged, connectivity=8)
    found = []  # (area, first pixel, region mask in its box, x0, y0)
    for k in range(1, count):
        x0, y0, w, h = (int(stats[k, c]) for c in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP,
                                                     cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
        box = np.s_[y0:y0 + h, x0:x0 + w]
        blob = (labels[box] == k) & fg[box]  # the bridge joins regions; only instrument pixels count
        if np.count_nonzero(blob) < min_area_net:
            continue
        crop_parts = parts[box] if parts is not None else None
        for region in split_region(blob, crop_parts, shape=shape, origin=(x0, y0),
                                   min_part_area=min_part_net, min_area=min_area_net):
            row, col = divmod(int(region.argmax()), w)
            found.append((np.count_nonzero(region), (y0 + row, x0 + col), region, x0, y0))
    if result.net_dark is not None:  # before orphans join them: a jaw fragment must not go with a bar
        found = _not_black(found, result.net_dark)
    stop_near = _near_field_stop(result.net_dark & ~fg) if result.net_dark is not None else None
    if parts is not None:
        found = _attach_orphans(found, parts, shape, min_part_net, min_area_net, stop_near)
    if stop_near is not None:
        found = _off_the_field_stop(found, stop_near)
    found.sort(key=lambda f: (-f[0], f[1]))  # largest first; ties in raster order (deterministic)

    instance_map = np.zeros(shape, np.uint16)
    instruments = []
    for area, _, region, x0, y0 in found:
        h, w = region.shape
        box = np.s_[y0:y0 + h, x0:x0 + w]
        pix = _Pixels.of(region)
        score = math.nan
        if not geometry_only:
            score = float(_region_means(result.foreground[None], box, region)[0])
            if score < min_score:
                continue
        index = len(instruments) + 1
        instance_map[box][region] = index
        crop_parts = part_at = None
        if parts is not None:  # jaws labelled shaft must not tilt the shaft axis either
            crop_parts = _jaw_parts(region, parts[box], pix, shape, (x0, y0), min_part_net)
            part_at = crop_parts[pix.ys, pix.xs]
        u, v, source = _tip(region, crop_parts, pix, part_at, shape, (x0, y0), min_part_net)
        centre, axis = _shaft_axis(pix, part_at, (u - x0, v - y0))
        tip_in, point_in = to_input_coords([[u, v], centre + (x0, y0)], shape, result.size)
        direction = np.array([axis[0] * sx, axis[1] * sy])
        direction /= max(np.linalg.norm(direction), 1e-12)
        votes, taper = None, None
        if not geometry_only:
            if result.type_probs is not None:
                votes = _type_votes(result.type_probs, box, region)
            taper = _taper(pix, part_at, shape, (x0, y0), axis, result.size)
        instruments.append(Instrument(index, result.input_area(area), score, votes, tuple(tip_in),
                                      source, tuple(point_in), tuple(direction), taper))
    return instruments, instance_map
