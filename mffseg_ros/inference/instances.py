"""Instrument instances and their tips from the type and parts label maps (pure numpy/cv2).

An instance is a connected component (8-connected) of one type's mask, at least `min_area` pixels.
Its tip is the centroid of its clasper pixels; without claspers, of its wrist pixels; without either,
the end of its shaft farthest from the image border (the shaft enters the view from the border).
Pixel coordinates: u = column, v = row, pixel centres at integers (the OpenCV / camera_info convention).
"""
import math
from dataclasses import dataclass

import cv2
import numpy as np

from mffseg_ros.model.classes import NUM_CLASSES, PART_CLASPERS, PART_SHAFT, PART_WRIST

NAN3 = (math.nan, math.nan, math.nan)
DEFAULT_MIN_AREA = 100  # px; below this a blob is segmentation noise at endoscope resolutions
DEFAULT_MIN_PART_AREA = 10  # px of claspers/wrist needed before they define the tip
# source name -> code published in the tips cloud: the part id that gave the tip (0: no part labels).
SOURCE_CODES = {'claspers': PART_CLASPERS, 'wrist': PART_WRIST, 'shaft_end': PART_SHAFT, 'instance_end': 0}


@dataclass
class Tip:
    instance_id: int  # 1..N, also the value of its pixels in the instance map
    type_id: int  # 1..7, see model.classes.TASK_CLASSES['type']
    u: float  # tip column, left image
    v: float  # tip row
    area_px: int  # pixels in the instance
    score: float  # mean confidence over the instance (1.0 without a confidence map)
    source: str  # 'claspers' | 'wrist' | 'shaft_end' | 'instance_end'
    xyz: tuple = NAN3  # metres, left camera optical frame; NaN until triangulated


def _end_point(ys, xs, height, width):
    """The end of an elongated blob farthest from the image border: mean of its last slab along the
    principal axis, so the point sits in the middle of the shaft, not on one of its edges."""
    pts = np.column_stack([xs, ys]).astype(np.float64)
    centre = pts.mean(axis=0)
    if len(pts) < 2:
        return centre
    _, vecs = np.linalg.eigh(np.cov((pts - centre).T))
    proj = (pts - centre) @ vecs[:, -1]  # coordinate along the major axis
    lo, hi = proj.min(), proj.max()
    band = max(1.5, 0.05 * (hi - lo))
    ends = [pts[proj <= lo + band].mean(axis=0), pts[proj >= hi - band].mean(axis=0)]
    border = [min(x, y, width - 1 - x, height - 1 - y) for x, y in ends]
    return ends[int(np.argmax(border))]  # tie -> the first end, deterministic


def _centroid(mask):
    """(pixel count, cx, cy) of a bool mask; cv2.moments is several times faster than np.nonzero."""
    m = cv2.moments(mask.view(np.uint8), binaryImage=True)
    if m['m00'] == 0:
        return 0, math.nan, math.nan
    return int(m['m00']), m['m10'] / m['m00'], m['m01'] / m['m00']


def _tip_of(inst_mask, parts_crop, x0, y0, shape, min_part_area):
    """(u, v, source) of one instance given its mask and the parts labels in its bounding box."""
    for part, source in ((PART_CLASPERS, 'claspers'), (PART_WRIST, 'wrist')):
        count, cx, cy = _centroid(inst_mask & (parts_crop == part))
        if count >= min_part_area:
            return x0 + cx, y0 + cy, source
    ys, xs = np.nonzero(inst_mask & (parts_crop == PART_SHAFT))
    source = 'shaft_end'
    if len(xs) == 0:  # the parts head saw no instrument here: use the whole instance's shape
        ys, xs = np.nonzero(inst_mask)
        source = 'instance_end'
    u, v = _end_point(ys + y0, xs + x0, *shape)
    return u, v, source


def _check_maps(type_map, parts_map, confidence):
    type_map = np.asarray(type_map)
    parts_map = np.asarray(parts_map)
    if type_map.ndim != 2 or type_map.shape != parts_map.shape:
        raise ValueError(f'type and parts maps must be HxW of one shape, '
                         f'got {type_map.shape} and {parts_map.shape}')
    if confidence is not None:
        confidence = np.asarray(confidence)
        if confidence.shape != type_map.shape:
            raise ValueError(f'confidence {confidence.shape} does not match the label maps {type_map.shape}')
        confidence = confidence.astype(np.float32, copy=False)  # cv2.mean takes float32, not float16
    return type_map.astype(np.uint8, copy=False), parts_map, confidence


def find_tips(type_map, parts_map, *, min_area=DEFAULT_MIN_AREA, confidence=None,
              min_part_area=DEFAULT_MIN_PART_AREA):
    """Instances of every instrument type and their tips.

    type_map, parts_map: HxW labels (type 0..7, parts 0..3; 255 = ignore, treated as background).
    confidence: optional HxW float map (max softmax of the type head).
    Returns (tips, instance_map): tips ordered by type id, then area (largest first), then raster order;
    instance_map is HxW uint16 with each instance's pixels set to its instance_id (0 elsewhere).
    """
    type_map, parts_map, confidence = _check_maps(type_map, parts_map, confidence)
    height, width = type_map.shape
    histogram = cv2.calcHist([type_map], [0], None, [256], [0, 256]).ravel()
    present = np.flatnonzero(histogram[1:NUM_CLASSES['type']]) + 1
    found = []  # (type_id, area, first pixel (row, col), component mask in the type's box, box origin)
    for type_id in present:
        mask = cv2.compare(type_map, int(type_id), cv2.CMP_EQ)
        # Label only the type's bounding box (a full-frame int32 label image costs ~10 ms alone), and
        # count areas with bincount: connectedComponentsWithStats is 3-4x slower than this here.
        bx, by, bw, bh = cv2.boundingRect(mask)
        count, labels = cv2.connectedComponents(mask[by:by + bh, bx:bx + bw], connectivity=8, ltype=cv2.CV_32S)
        areas = np.bincount(labels.ravel(), minlength=count)
        for k in np.flatnonzero(areas[1:] >= min_area) + 1:
            component = labels == k
            row, col = divmod(int(component.argmax()), bw)  # tie-break: label numbers vary with threads
            found.append((int(type_id), int(areas[k]), (by + row, bx + col), component, bx, by))
    found.sort(key=lambda f: (f[0], -f[1], f[2]))

    instance_map = np.zeros((height, width), np.uint16)
    tips = []
    for instance_id, (type_id, area, _, component, bx, by) in enumerate(found, start=1):
        x, y, w, h = cv2.boundingRect(component.view(np.uint8))
        inst_mask = component[y:y + h, x:x + w]
        x0, y0 = bx + x, by + y  # the instance's box in image coordinates
        box = np.s_[y0:y0 + h, x0:x0 + w]
        np.copyto(instance_map[box], instance_id, where=inst_mask)
        u, v, source = _tip_of(inst_mask, parts_map[box], x0, y0, (height, width), min_part_area)
        score = 1.0 if confidence is None else cv2.mean(confidence[box], mask=inst_mask.view(np.uint8))[0]
        tips.append(Tip(instance_id, type_id, float(u), float(v), area, score, source))
    return tips, instance_map


# The ~/tips PointCloud2 point layout (little-endian, 36 bytes a point). A consumer with only numpy
# reads it with np.frombuffer(msg.data, TIP_DTYPE) (is_dense is false: x y z are NaN without 3-D).
TIP_DTYPE = np.dtype({
    'names': ['x', 'y', 'z', 'u', 'v', 'area_px', 'score', 'instance_id', 'type_id', 'source'],
    'formats': ['<f4', '<f4', '<f4', '<f4', '<f4', '<f4', '<f4', '<u2', '<u2', 'u1'],
    'offsets': [0, 4, 8, 12, 16, 20, 24, 28, 30, 32],
    'itemsize': 36,
})
_POINTFIELD_TYPES = {'<f4': 7, '<u2': 4, '|u1': 2}  # sensor_msgs/PointField FLOAT32, UINT16, UINT8
# (name, offset, PointField datatype, count) for building sensor_msgs/PointField entries.
TIP_POINT_FIELDS = tuple((name, TIP_DTYPE.fields[name][1], _POINTFIELD_TYPES[TIP_DTYPE.fields[name][0].str], 1)
                         for name in TIP_DTYPE.names)


def tips_to_records(tips):
    """Tips -> structured array of TIP_DTYPE (the PointCloud2 payload: `.tobytes()`)."""
    records = np.zeros(len(tips), TIP_DTYPE)
    for i, t in enumerate(tips):
        records[i] = (*t.xyz, t.u, t.v, t.area_px, t.score, t.instance_id, t.type_id, SOURCE_CODES[t.source])
    return records
