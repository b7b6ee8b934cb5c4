"""The instrument-level outputs of the node over real DDS: ~/instances, ~/tips, ~/tip_poses, tracking.

The network is replaced by a segmenter that reads the label maps painted into the frames (red = type,
green = part): every scene (crossings, shuffled types, a moving sequence) is then exact, and what is
checked is the node's real post-processing and message plumbing end to end over DDS. The real
network's path through the node is covered by test_node.py and the demo test.
"""
import itertools
import time

import numpy as np
import pytest
import torch
from geometry_msgs.msg import PoseArray
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from test_perception import P_LEFT, P_RIGHT, H, W, blank, draw_instrument, stereo_label_maps

from mffseg_ros.inference.instruments import UNKNOWN_TYPE
from mffseg_ros.inference.results import SegmentationResult
from mffseg_ros.inference.tip_records import TIP_DTYPE, rotate_x_axis
from mffseg_ros.model.classes import TASK_CLASSES
from mffseg_ros.ros import conversions

_stamps = itertools.count(1)
_namespaces = itertools.count(1)


class PaintedLabels:
    """A Segmenter stand-in whose 'network' reads the labels painted into the frame."""
    device = torch.device('cpu')
    precision = 'fp32'
    class_names = {task: list(names) for task, names in TASK_CLASSES.items()}

    def describe(self):
        return 'painted labels (test)'

    def warm_up(self, *args, **kwargs):
        return 0.0

    def segment_batch(self, frames):
        return [SegmentationResult.from_labels(f[..., 1].copy(), f[..., 0].copy()) for f in frames]

    def segment(self, rgb):
        return self.segment_batch([rgb])[0]


def painted(type_map, parts_map):
    return np.ascontiguousarray(np.stack([type_map, parts_map, np.zeros_like(type_map)], axis=2))


@pytest.fixture
def node(ros):
    ns = f'/i{next(_namespaces)}'
    ros.start_node(namespace=ns, parameters={'min_instance_area': 30, 'diagnostics_period': 0.2},
                   segmenter=PaintedLabels())
    return ns


def header():
    n = next(_stamps)
    h = Header(frame_id='left_optical')
    h.stamp.sec, h.stamp.nanosec = 2000 + n, 0
    return h, (2000 + n) * 1_000_000_000


def camera_infos(h):
    infos = []
    for P in (P_LEFT, P_RIGHT):
        info = CameraInfo(header=h, height=H, width=W, distortion_model='plumb_bob')
        info.p = [float(v) for v in P.ravel()]
        info.k = [float(v) for v in P[:, :3].ravel()]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.d = [0.0] * 5
        infos.append(info)
    return infos


class Outputs:
    def __init__(self, ros, ns):
        self.tips = ros.collect(f'{ns}/mffseg/tips', PointCloud2)
        self.instances = ros.collect(f'{ns}/mffseg/instances', Image)
        self.poses = ros.collect(f'{ns}/mffseg/tip_poses', PoseArray)
        self.ros = ros
        self.ns = ns
        self.left = ros.publisher(f'{ns}/stereo/left/image_raw', Image)
        self.right = ros.publisher(f'{ns}/stereo/right/image_raw', Image)
        self.info = [ros.publisher(f'{ns}/stereo/{side}/camera_info', CameraInfo) for side in ('left', 'right')]
        assert ros.wait_matched(self.left) and ros.wait_matched(self.right)
        assert all(ros.wait_matched(p) for p in self.info)

    def send(self, left_rgb, right_rgb, with_info=True):
        """Publishes one stereo frame (with camera_infos) and waits for its tips, instances and poses."""
        h, stamp = header()
        if with_info:
            for pub, info in zip(self.info, camera_infos(h)):
                pub.publish(info)
            time.sleep(0.3)  # calibration before the images (separate topics: no order across them)
        self.left.publish(conversions.image_msg(left_rgb, h, 'rgb8'))
        self.right.publish(conversions.image_msg(right_rgb, h, 'rgb8'))
        assert self.ros.wait_for(lambda: self.tips.stamped(stamp) and self.instances.stamped(stamp)
                                 and self.poses.stamped(stamp), timeout=20)
        tips = np.frombuffer(bytes(self.tips.stamped(stamp)[0].data), TIP_DTYPE)
        msg = self.instances.stamped(stamp)[0]
        ids = np.frombuffer(bytes(msg.data), '<u2').reshape(msg.height, msg.width)
        return tips, ids, self.poses.stamped(stamp)[0]


def stereo_scene(tools):
    """Painted left and right frames of instruments (type, tip xyz, border pixel)."""
    maps = stereo_label_maps(tools)
    return [painted(*maps[side]) for side in ('left', 'right')]


def test_instances_match_tips_and_poses_follow_them(ros, node):
    out = Outputs(ros, node)
    tips, ids, poses = out.send(*stereo_scene([(3, (-0.012, -0.004, 0.07), (0, 0)),
                                               (5, (0.010, 0.006, 0.09), (W - 1, H - 1))]))
    assert ids.shape == (H, W) and len(tips) == 2
    assert set(np.unique(ids)) - {0} == set(tips['instance_id'].tolist())
    for t in tips:  # each tip lies on its own instrument's pixels in ~/instances
        assert ids[int(round(t['v'])), int(round(t['u']))] == t['instance_id']
    assert sorted(tips['type_id'].tolist()) == [3, 5]
    assert len(poses.poses) == len(tips)
    for t, pose in zip(tips, poses.poses):  # same order as ~/tips
        assert np.isfinite(t['z']) and pose.position.z == pytest.approx(float(t['z']), abs=1e-6)
        q = pose.orientation
        axis = rotate_x_axis((q.x, q.y, q.z, q.w))
        # Both eyes draw each shaft to the same border pixel (zero disparity): the shaft recedes into
        # the distance, so the axis pointing to the tip points towards the camera.
        assert axis[2] < 0


def test_ids_stay_stable_on_a_moving_sequence(ros, node):
    out = Outputs(ros, node)
    seen = []
    for step in range(5):
        left, right = stereo_scene([(3, (-0.012 + 0.001 * step, -0.004, 0.07), (0, 0)),
                                    (5, (0.010 - 0.001 * step, 0.006, 0.09), (W - 1, H - 1))])
        tips, _, _ = out.send(left, right)
        seen.append({int(t['type_id']): int(t['instance_id']) for t in tips})
    assert all(s == seen[0] for s in seen) and len(set(seen[0].values())) == 2


def test_crossing_instruments_stay_two_instances(ros, node):
    out = Outputs(ros, node)
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 1, (200, 40), (0, H - 1), width=11)
    draw_instrument(type_map, parts_map, 2, (60, 40), (W - 1, H - 1), width=11)
    frame = painted(type_map, parts_map)
    tips, ids, _ = out.send(frame, frame, with_info=False)
    assert len(tips) == 2 and len(set(np.unique(ids)) - {0}) == 2
    assert sorted(round(float(u)) for u in tips['u']) == [60, 200]


def test_a_shuffled_type_map_still_gives_one_instance_per_instrument(ros, node):
    out = Outputs(ros, node)
    type_map, parts_map = blank()
    draw_instrument(type_map, parts_map, 3, (80, 70), (0, 20))
    draw_instrument(type_map, parts_map, 6, (170, 120), (W - 1, H - 1))
    rng = np.random.default_rng(0)
    noisy = np.where(type_map > 0, rng.integers(1, 8, type_map.shape), 0).astype(np.uint8)
    frame = painted(noisy, parts_map)
    tips, ids, _ = out.send(frame, frame, with_info=False)
    assert len(tips) == 2 and len(set(np.unique(ids)) - {0}) == 2
    assert tips['type_id'].tolist() == [UNKNOWN_TYPE, UNKNOWN_TYPE]  # a weak vote is not guessed
