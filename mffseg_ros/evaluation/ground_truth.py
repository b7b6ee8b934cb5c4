"""Ground-truth instruments from exact label maps, with the node's own tip definition.

The tip is `inference.instruments.instrument_tip` applied to each instrument's true pixels in each eye,
triangulated with the true projections: a perfect segmentation gives exactly the ground truth, so the
scores measure the segmentation and matching, not a difference of definitions. The shaft axis comes
from the generator's geometry (unit vector pointing to the tip, left optical frame).
"""
import math

import numpy as np

from mffseg_ros.inference.instruments import DEFAULT_MIN_AREA, instrument_tip
from mffseg_ros.inference.stereo import triangulate

# The ground-truth tips cloud (topics.GT_TIPS): the ~/tips fields a scorer needs, plus the true axis.
# score: 1 when the instrument is visible (>= min_area px) in both eyes, so its 3-D tip is defined.
GT_TIP_DTYPE = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('u', '<f4'), ('v', '<f4'),
                         ('area_px', '<f4'), ('score', '<f4'), ('ax', '<f4'), ('ay', '<f4'), ('az', '<f4'),
                         ('instance_id', '<u2'), ('type_id', '<u2')])


def eye_tips(instance_map, parts_map, *, min_area=DEFAULT_MIN_AREA):
    """{instance id: (u, v, area px)} of every instrument with at least `min_area` pixels in one eye."""
    out = {}
    ids, counts = np.unique(instance_map[instance_map > 0], return_counts=True)
    for k, count in zip(ids.tolist(), counts.tolist()):
        if count < min_area:
            continue
        ys, xs = np.nonzero(instance_map == k)
        y0, x0 = ys.min(), xs.min()
        box = np.s_[y0:ys.max() + 1, x0:xs.max() + 1]
        u, v, _ = instrument_tip(instance_map[box] == k, parts_map[box], shape=instance_map.shape, origin=(x0, y0))
        out[int(k)] = (float(u), float(v), int(count))
    return out


def ground_truth_records(labels_left, labels_right, P_left, P_right, generator_tips, *, min_area=DEFAULT_MIN_AREA):
    """One record (GT_TIP_DTYPE) per instrument visible in the left eye. labels_*: dicts with 'instance'
    and 'parts' maps of rectified eyes; generator_tips: the synthetic frame's tip dicts (type, axis)."""
    left = eye_tips(labels_left['instance'], labels_left['parts'], min_area=min_area)
    right = eye_tips(labels_right['instance'], labels_right['parts'], min_area=min_area)
    info = {t['instance_id']: t for t in generator_tips}
    records = np.zeros(len(left), GT_TIP_DTYPE)
    for n, (k, (u, v, area)) in enumerate(sorted(left.items())):
        xyz = (math.nan,) * 3
        if k in right:
            xyz = tuple(triangulate(P_left, P_right, [(u, v)], [right[k][:2]])[0])
        axis = info.get(k, {}).get('axis', (math.nan,) * 3)
        records[n] = (*xyz, u, v, area, float(k in right), *axis, k, info.get(k, {}).get('type_id', 0))
    return records
