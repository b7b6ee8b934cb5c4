"""The ~/tips point layout and the ~/tip_poses orientation convention, defined once (numpy only).

A consumer with only numpy reads a ~/tips PointCloud2 with
    np.frombuffer(msg.data, TIP_DTYPE, count=msg.width * msg.height)
(is_dense is false: x y z are NaN without 3-D). One point per instrument, ordered by instance_id.
"""
import numpy as np

TIP_DTYPE = np.dtype({
    'names': ['x', 'y', 'z', 'u', 'v', 'area_px', 'score', 'type_score', 'instance_id', 'type_id', 'source'],
    'formats': ['<f4', '<f4', '<f4', '<f4', '<f4', '<f4', '<f4', '<f4', '<u2', '<u2', 'u1'],
    'offsets': [0, 4, 8, 12, 16, 20, 24, 28, 32, 34, 36],
    'itemsize': 40,
})
_POINTFIELD_TYPES = {'<f4': 7, '<u2': 4, '|u1': 2}  # sensor_msgs/PointField FLOAT32, UINT16, UINT8
# (name, offset, PointField datatype, count) for building sensor_msgs/PointField entries.
TIP_POINT_FIELDS = tuple((name, TIP_DTYPE.fields[name][1], _POINTFIELD_TYPES[TIP_DTYPE.fields[name][0].str], 1)
                         for name in TIP_DTYPE.names)


def tip_records(instruments):
    """perception.TrackedInstrument list -> structured array of TIP_DTYPE (the PointCloud2 payload)."""
    records = np.zeros(len(instruments), TIP_DTYPE)
    for k, inst in enumerate(instruments):
        records[k] = (*inst.xyz, *inst.tip, inst.area_px, inst.score, inst.type_score, inst.track_id,
                      inst.type_id, inst.source_code)
    return records


def axis_quaternion(axis):
    """(x, y, z, w) of the shortest rotation taking the x axis onto the unit vector `axis`: a pose whose
    x axis points along the shaft towards the tip (RViz draws PoseArray arrows along x). Identity for
    None or a non-finite axis."""
    if axis is None or not np.all(np.isfinite(axis)):
        return (0.0, 0.0, 0.0, 1.0)
    a = np.asarray(axis, np.float64)
    a = a / np.linalg.norm(a)
    x = np.array([1.0, 0.0, 0.0])
    dot = float(x @ a)
    if dot < -1 + 1e-9:  # opposite: half a turn about z
        return (0.0, 0.0, 1.0, 0.0)
    v = np.cross(x, a)
    q = np.array([v[0], v[1], v[2], 1.0 + dot])
    q /= np.linalg.norm(q)
    return tuple(float(c) for c in q)


def rotate_x_axis(quaternion):
    """The x axis rotated by (x, y, z, w): how a consumer recovers the shaft direction from a pose."""
    qx, qy, qz, qw = quaternion
    return np.array([1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy + qz * qw), 2 * (qx * qz - qy * qw)])

