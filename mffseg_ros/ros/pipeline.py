"""What the node computes from segmentation results, without any ROS: masks, tips, 3-D tips.

Kept separate from the node so it can be checked on exact label maps (known tips, projected
stereo) while the node's own tests check the plumbing with the real network.
"""
from dataclasses import dataclass, replace

import numpy as np


@dataclass
class LabelMaps:
    """The fields of a SegmentationResult the post-processing needs (any object with them works)."""
    type: np.ndarray
    parts: np.ndarray
    confidence: np.ndarray | None = None


def present_types(type_map, num_types):
    """Instrument type ids (1..num_types-1) that occur in `type_map`, ascending."""
    counts = np.bincount(type_map.ravel(), minlength=256)
    return [t for t in range(1, num_types) if counts[t]]


def type_mask(type_map, type_id):
    """mono8 mask: 255 where the pixel has `type_id`, 0 elsewhere."""
    return np.where(type_map == type_id, np.uint8(255), np.uint8(0))


def tips_2d(maps, min_area):
    from mffseg_ros.inference.instances import find_tips
    tips, _ = find_tips(maps.type, maps.parts, min_area=min_area, confidence=maps.confidence)
    return tips


def frame_tips(left, min_area, right=None, P_left=None, P_right=None, rectify_left=None, rectify_right=None):
    """Tips of the left image; with a right image and both projection matrices, matched across
    the pair and triangulated (xyz in the left optical frame, metres). Unmatched tips keep xyz NaN.
    rectify_left/right: raw pixel -> rectified pixel functions (stereo.pixel_rectifier) for images
    that are not rectified (image_raw with a calibrated camera_info); the tips' u v stay raw."""
    tips_left = tips_2d(left, min_area)
    if right is None or P_left is None or P_right is None or not tips_left:
        return tips_left
    from mffseg_ros.inference.stereo import match_and_triangulate
    tips_right = tips_2d(right, min_area)
    if not tips_right:
        return tips_left
    if rectify_left is None and rectify_right is None:
        return match_and_triangulate(tips_left, tips_right, P_left, P_right)
    matched = match_and_triangulate(_rectified(tips_left, rectify_left), _rectified(tips_right, rectify_right),
                                    P_left, P_right)
    return [replace(t, xyz=m.xyz) for t, m in zip(tips_left, matched)]


def _rectified(tips, rectify):
    if rectify is None:
        return tips
    uv = rectify(np.array([(t.u, t.v) for t in tips], np.float64))
    return [replace(t, u=float(u), v=float(v)) for t, (u, v) in zip(tips, uv)]
