"""The node under hostile input over real DDS: oversized, tiny and bomb frames, bad camera_info, a
broken right camera, publishers that change QoS. Every bad message is counted as `rejected` (never
`errors`) and the frames after it are still processed."""
import itertools
import math
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header

from mffseg_ros.ros import conversions
from mffseg_ros.ros.diagnostics import diagnostic_values

H, W = 128, 160
_stamps = itertools.count(1)
_namespaces = itertools.count(1)


@pytest.fixture
def start(ros, segmenter):
    def _start(**parameters):
        ns = f'/r{next(_namespaces)}'
        parameters.setdefault('diagnostics_period', 0.2)
        # the probe's publishers are reliable; `auto` would re-subscribe once they appear (own test below)
        parameters.setdefault('input_reliability', 'reliable')
        return ros.start_node(namespace=ns, parameters=parameters, segmenter=segmenter), ns
    return _start


def header():
    n = next(_stamps)
    h = Header(frame_id='left_optical')
    h.stamp.sec, h.stamp.nanosec = 2000 + n, 0
    return h, (2000 + n) * 1_000_000_000


def frame():
    rgb = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    cv2.rectangle(rgb, (20, 30), (140, 60), (200, 200, 210), -1)
    return rgb


def png_declaring(width, height):
    """~62 KB of PNG that declares 8000x8000 (or any size) black pixels: a decompression bomb."""
    def chunk(kind, body):
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body) & 0xFFFFFFFF)
    z = zlib.compressobj(9)
    rows = b''.join(z.compress(b'\0' * (1 + width)) for _ in range(height)) + z.flush()
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
            + chunk(b'IDAT', rows) + chunk(b'IEND', b''))


def camera_info(h, baseline=0.0, **changes):
    fields = dict(height=H, width=W, distortion_model='plumb_bob', d=[0.0] * 5,
                  k=[200.0, 0, W / 2, 0, 200.0, H / 2, 0, 0, 1], r=[1.0, 0, 0, 0, 1, 0, 0, 0, 1],
                  p=[200.0, 0, W / 2, -200.0 * baseline, 0, 200.0, H / 2, 0, 0, 0, 1, 0])
    fields.update(changes)
    return CameraInfo(header=h, **fields)


def counts(node):
    return node.snapshot()['counts']


def publish_one_by_one(ros, node, pub, msgs, key='rejected'):
    """Publish each message once the previous one is counted (so none is dropped as stale instead)."""
    for msg in msgs:
        before = counts(node).get(key, 0)
        pub.publish(msg)
        assert ros.wait_for(lambda key=key, before=before: counts(node).get(key, 0) > before), (key, counts(node))


def node_diagnostics(diagnostics, node, predicate):
    mine = [m for m in list(diagnostics.messages)
            if m.status[0].name.startswith(f'{node.get_name()}:') and predicate(diagnostic_values(m))]
    return mine[-1] if mine else None


def test_bombs_oversized_and_tiny_compressed_frames_are_rejected_not_errors(ros, start):
    node, ns = start(stereo=False, use_compressed=True)
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    pub = ros.publisher(f'{ns}/stereo/left/image_raw/compressed', CompressedImage)
    assert ros.wait_matched(pub)
    jpeg_huge = bytearray(cv2.imencode('.jpg', np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    sof = jpeg_huge.index(b'\xff\xc0')
    jpeg_huge[sof + 5:sof + 9] = (60000).to_bytes(2, 'big') + (65000).to_bytes(2, 'big')
    bad = {
        'png bomb 8000x8000': ('png', png_declaring(8000, 8000)),
        'jpeg declaring 65000x60000': ('jpeg', bytes(jpeg_huge)),
        'png 1x1': ('png', cv2.imencode('.png', np.zeros((1, 1, 3), np.uint8))[1].tobytes()),
        'jpeg 2x2': ('jpeg', cv2.imencode('.jpg', np.zeros((2, 2, 3), np.uint8))[1].tobytes()),
    }
    publish_one_by_one(ros, node, pub, [CompressedImage(header=header()[0], format=f, data=d) for f, d in bad.values()])
    h, stamp = header()
    pub.publish(CompressedImage(header=h, format='jpeg', data=cv2.imencode('.jpg', frame())[1].tobytes()))
    assert ros.wait_for(lambda: labels.stamped(stamp)), 'node stopped after bad frames'
    snap = node.snapshot()
    assert snap['counts']['rejected'] == len(bad) and snap['counts']['errors'] == 0, snap
    assert snap['counts']['processed'] == 1


def test_oversized_and_tiny_raw_frames_are_rejected_and_the_bound_is_a_parameter(ros, start):
    node, ns = start(stereo=False)
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    pub = ros.publisher(f'{ns}/stereo/left/image_raw', Image)
    assert ros.wait_matched(pub)
    huge = Image(header=header()[0], encoding='rgb8', height=8000, width=8000, step=24000, data=b'')
    tiny = [conversions.image_msg(np.zeros((n, n, 3), np.uint8), header()[0], 'rgb8') for n in (1, 2)]
    publish_one_by_one(ros, node, pub, [huge, *tiny])
    last_error = node.snapshot()['last_error']
    assert 'too small for this model' in last_error, last_error
    h, stamp = header()
    pub.publish(conversions.image_msg(frame(), h, 'rgb8'))
    assert ros.wait_for(lambda: labels.stamped(stamp))
    from rclpy.parameter import Parameter
    assert node.set_parameters([Parameter('max_input_pixels', value=H * W - 1)])[0].successful
    publish_one_by_one(ros, node, pub, [conversions.image_msg(frame(), header()[0], 'rgb8')])
    assert 'above max_input_pixels' in node.snapshot()['last_error']
    assert counts(node)['rejected'] == 4 and counts(node)['errors'] == 0


def test_bad_camera_info_is_rejected_and_every_later_frame_keeps_its_outputs(ros, start):
    node, ns = start(stereo=True, min_instance_area=20)
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    tips = ros.collect(f'{ns}/mffseg/tips', PointCloud2)
    diagnostics = ros.collect('/diagnostics', DiagnosticArray)
    left, right = (ros.publisher(f'{ns}/stereo/{s}/image_raw', Image) for s in ('left', 'right'))
    infos = [ros.publisher(f'{ns}/stereo/{s}/camera_info', CameraInfo) for s in ('left', 'right')]
    assert all(ros.wait_matched(p) for p in (left, right, *infos))
    h, _ = header()
    infos[0].publish(camera_info(h))
    infos[1].publish(camera_info(h, baseline=0.005))
    assert ros.wait_for(lambda: all(c is not None for c in node._calibrations.values()))
    good_left = node._calibrations['left'].P.copy()

    def pair():
        h, stamp = header()
        left.publish(conversions.image_msg(frame(), h, 'rgb8'))
        right.publish(conversions.image_msg(frame(), h, 'rgb8'))
        assert ros.wait_for(lambda: labels.stamped(stamp) and tips.stamped(stamp)), counts(node)
    pair()  # now the node knows the image size, which a camera_info must match
    bad = [camera_info(h, d=[0.1, 0.01, 0.001]), camera_info(h, d=[0.1] * 6), camera_info(h, d=[math.nan] * 5),
           camera_info(h, r=[math.nan] + [0.0] * 8), camera_info(h, r=[2.0, 0, 0, 0, 1, 0, 0, 0, 1]),
           camera_info(h, p=[0.0] * 12), camera_info(h, height=2 * H, width=2 * W)]
    publish_one_by_one(ros, node, infos[0], bad, key='camera_info_rejected')
    np.testing.assert_array_equal(node._calibrations['left'].P, good_left)  # the last good one is kept
    for _ in range(3):
        pair()
    c = counts(node)
    assert c['camera_info_rejected'] == len(bad) and c['camera_info_rejected.left'] == len(bad)
    assert c['errors'] == 0 and c['segmented_pairs'] == 4, c  # right eye segmented: 3-D was attempted
    assert ros.wait_for(lambda: node_diagnostics(diagnostics, node,
                                                 lambda v: v.get('camera_info_rejected') == str(len(bad))))
    report = node_diagnostics(diagnostics, node, lambda v: v.get('camera_info_rejected') == str(len(bad)))
    values = diagnostic_values(report)
    assert values['calibration.left'].startswith('ok (kept the last good one); rejected: camera_info describes')
    assert values['calibration.right'] == 'ok'


def test_stereo_without_usable_calibration_warns_and_says_why(ros, start):
    node, ns = start(stereo=True)
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    diagnostics = ros.collect('/diagnostics', DiagnosticArray)
    left, right = (ros.publisher(f'{ns}/stereo/{s}/image_raw', Image) for s in ('left', 'right'))
    info = ros.publisher(f'{ns}/stereo/left/camera_info', CameraInfo)
    assert all(ros.wait_matched(p) for p in (left, right, info))
    publish_one_by_one(ros, node, info, [camera_info(header()[0], d=[math.nan] * 5)], key='camera_info_rejected')
    h, stamp = header()
    left.publish(conversions.image_msg(frame(), h, 'rgb8'))
    right.publish(conversions.image_msg(frame(), h, 'rgb8'))
    assert ros.wait_for(lambda: labels.stamped(stamp))

    def warned():
        return node_diagnostics(diagnostics, node, lambda v: v.get('processed') == '1')
    assert ros.wait_for(lambda: warned() and warned().status[0].level == DiagnosticStatus.WARN)
    status = warned().status[0]
    assert status.message.startswith('stereo without 3-D: left camera_info rejected: D has non-finite')
    assert 'right camera_info none' in status.message
    assert diagnostic_values(warned())['calibration.right'] == 'none'


def test_a_broken_right_camera_is_counted_even_without_3d(ros, start):
    node, ns = start(stereo=True)  # no camera_info and no ~/tips subscriber: the right eye is not segmented
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    left, right = (ros.publisher(f'{ns}/stereo/{s}/image_raw', Image) for s in ('left', 'right'))
    assert ros.wait_matched(left) and ros.wait_matched(right)
    for broken in (Image(encoding='rgb8', height=H, width=W, step=3 * W, data=b'\0' * 10),
                   Image(encoding='rgb8', height=9000, width=9000, step=27000, data=b'')):
        h, stamp = header()
        broken.header = h
        left.publish(conversions.image_msg(frame(), h, 'rgb8'))
        right.publish(broken)
        assert ros.wait_for(lambda stamp=stamp: labels.stamped(stamp))
    snap = node.snapshot()
    assert snap['rejected_by_reason'] == {'right': 2} and snap['counts']['errors'] == 0, snap
    assert 'above max_input_pixels' in snap['last_error']


def test_auto_input_qos_follows_the_publishers(ros, start):
    node, ns = start(stereo=False, input_reliability='auto')  # the default
    topic = 'stereo/left/image_raw'
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    reliable = ros.publisher(f'{ns}/{topic}', Image, 'reliable')
    assert ros.wait_for(lambda: node._input_reliability[topic] == 'reliable', timeout=5)
    h, stamp = header()
    assert ros.wait_matched(reliable)
    reliable.publish(conversions.image_msg(frame(), h, 'rgb8'))
    assert ros.wait_for(lambda: labels.stamped(stamp))
    best_effort = ros.publisher(f'{ns}/{topic}', Image, 'best_effort')  # a second camera driver
    assert ros.wait_for(lambda: node._input_reliability[topic] == 'best_effort', timeout=5)
    assert ros.wait_matched(best_effort)
    for pub in (best_effort, reliable):
        h, stamp = header()
        pub.publish(conversions.image_msg(frame(), h, 'rgb8'))
        assert ros.wait_for(lambda stamp=stamp: labels.stamped(stamp))
    ros.probe.destroy_publisher(best_effort)
    assert ros.wait_for(lambda: node._input_reliability[topic] == 'reliable', timeout=5)


def test_transport_delays_and_losses_are_reported(ros, start):
    node, ns = start(stereo=False)
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    diagnostics = ros.collect('/diagnostics', DiagnosticArray)
    pub = ros.publisher(f'{ns}/stereo/left/image_raw', Image)
    assert ros.wait_matched(pub)
    h, stamp = header()
    h.stamp.sec, h.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)  # a camera stamping with our clock
    stamp = h.stamp.sec * 1_000_000_000 + h.stamp.nanosec
    pub.publish(conversions.image_msg(frame(), h, 'rgb8'))
    assert ros.wait_for(lambda: labels.stamped(stamp))
    # a publisher whose sequence numbers jump by 3 lost 2 frames before the callback: counted, not silent
    gid = {'data': b'another camera'}
    delivered = [node._first_delivery('left', {'publisher_gid': gid, 'publication_sequence_number': seq})
                 for seq in (10, 13, 13)]
    assert delivered == [True, True, False]  # the second 13 came through an overlapping subscription
    assert counts(node)['superseded'] == counts(node)['superseded.left'] == 2
    assert ros.wait_for(lambda: node_diagnostics(diagnostics, node, lambda v: v.get('superseded') == '2'))
    values = diagnostic_values(node_diagnostics(diagnostics, node, lambda v: v.get('superseded') == '2'))
    assert 0.0 <= float(values['input_age_p50_ms']) < 60_000 and 0.0 <= float(values['transport_p99_ms']) < 60_000
    assert 0.0 <= float(values['transport_share']) <= 1.0 and values['superseded.left'] == '2'
