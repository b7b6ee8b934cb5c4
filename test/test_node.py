"""The segmentation node over real DDS (rclpy + Fast DDS in this process, domain and discovery
isolated by conftest.py). Frames are published into the node and what arrives is checked.

The network here is the real Segmenter (shipped weights, or a random model until they ship), so
these tests check the PLUMBING: stamps, frame_ids, sizes, topics, QoS, drops, lazy outputs,
rejection of bad messages. Instrument-level outputs over DDS on exact label maps are checked in
test_node_instruments.py, tip positions and 3-D accuracy in test_perception.py.
"""
import itertools
import time

import cv2
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from mffseg_ros.data.bags import image_array
from mffseg_ros.inference.instruments import UNKNOWN_TYPE
from mffseg_ros.model.classes import TASK_CLASSES
from mffseg_ros.ros import conversions
from mffseg_ros.ros.diagnostics import diagnostic_values

H, W = 128, 160
_stamps = itertools.count(1)
_namespaces = itertools.count(1)


@pytest.fixture
def start(ros, segmenter):
    """start(**parameters) -> (node, namespace): a fresh node in its own namespace."""
    def _start(**parameters):
        ns = f'/t{next(_namespaces)}'
        parameters.setdefault('diagnostics_period', 0.2)
        return ros.start_node(namespace=ns, parameters=parameters, segmenter=segmenter), ns
    return _start


def stamp_header(frame_id='left_optical'):
    n = next(_stamps)
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = 1000 + n, 1234
    return header, (1000 + n) * 1_000_000_000 + 1234


def frame(seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    cv2.rectangle(rgb, (20, 30), (140, 60), (200, 200, 210), -1)  # something instrument-like
    return rgb


def camera_info(header, baseline_px_m=0.0):
    info = CameraInfo(header=header, height=H, width=W)
    info.p = [200.0, 0.0, W / 2, -baseline_px_m, 0.0, 200.0, H / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def publish_pair(left_pub, right_pub, frame_id='left_optical', rgb=None):
    header, stamp = stamp_header(frame_id)
    rgb = frame() if rgb is None else rgb
    left_pub.publish(conversions.image_msg(rgb, header, 'rgb8'))
    if right_pub is not None:
        right_pub.publish(conversions.image_msg(rgb[:, ::-1], header, 'rgb8'))
    return stamp


def paced(stamp, period=0.002):
    """A burst far faster than the network (a frame every 2 ms), yet slow enough for the executor
    to hand every message to the node: the drops then happen in the node, where they are counted."""
    time.sleep(period)
    return stamp


def stereo_pubs(ros, ns, reliability='reliable'):
    left = ros.publisher(f'{ns}/stereo/left/image_raw', Image, reliability)
    right = ros.publisher(f'{ns}/stereo/right/image_raw', Image, reliability)
    assert ros.wait_matched(left) and ros.wait_matched(right)
    return left, right


def calibrated_stereo_pubs(ros, ns, node):
    """stereo_pubs, once the node has installed a rectified pair of camera_infos (a 5 mm baseline)."""
    left, right = stereo_pubs(ros, ns)
    infos = [ros.publisher(f'{ns}/stereo/{side}/camera_info', CameraInfo) for side in ('left', 'right')]
    assert all(ros.wait_matched(p) for p in infos)
    header, _ = stamp_header()
    infos[0].publish(camera_info(header))
    infos[1].publish(camera_info(header, baseline_px_m=200.0 * 0.005))
    assert ros.wait_for(lambda: all(c is not None for c in node._calibrations.values()))
    return left, right


def test_outputs_carry_the_input_header_at_input_resolution(ros, start):
    _node, ns = start(stereo=True)
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    parts = ros.collect(f'{ns}/mffseg/parts', Image)
    tips = ros.collect(f'{ns}/mffseg/tips', PointCloud2)
    left, right = stereo_pubs(ros, ns)
    stamp = publish_pair(left, right, frame_id='psm_left_optical')
    assert ros.wait_for(lambda: labels.stamped(stamp) and parts.stamped(stamp) and tips.stamped(stamp))
    for msg in (labels.stamped(stamp)[0], parts.stamped(stamp)[0], tips.stamped(stamp)[0]):
        assert msg.header.frame_id == 'psm_left_optical'
    lab, par = (image_array(c.stamped(stamp)[0]) for c in (labels, parts))
    assert labels.stamped(stamp)[0].encoding == 'mono8' and lab.shape == (H, W) and par.shape == (H, W)
    assert set(np.unique(lab)) <= set(range(len(TASK_CLASSES['type']))) | {UNKNOWN_TYPE}  # voted types
    assert par.max() < len(TASK_CLASSES['parts'])
    cloud = tips.stamped(stamp)[0]
    assert [f.name for f in cloud.fields] == list(conversions.TIP_DTYPE.names)
    assert cloud.point_step == conversions.TIP_DTYPE.itemsize and cloud.height == 1


def test_mask_topics_only_for_present_types(ros, start):
    _node, ns = start(stereo=False)
    names = TASK_CLASSES['type']
    masks = {t: ros.collect(f'{ns}/mffseg/masks/{names[t]}', Image) for t in range(1, len(names))}
    masks[UNKNOWN_TYPE] = ros.collect(f'{ns}/mffseg/masks/unknown', Image)
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    tips = ros.collect(f'{ns}/mffseg/tips', PointCloud2)  # published after the masks
    left = ros.publisher(f'{ns}/stereo/left/image_raw', Image)
    assert ros.wait_matched(left)
    stamps = []
    for seed in range(3):  # one frame at a time: a burst would (rightly) be dropped
        stamps.append(publish_pair(left, None, rgb=frame(seed)))
        assert ros.wait_for(lambda: tips.stamped(stamps[-1]))
    time.sleep(0.2)
    for stamp in stamps:
        lab = image_array(labels.stamped(stamp)[0])
        present = set(np.unique(lab)) - {0}
        got = {t for t, c in masks.items() if c.stamped(stamp)}
        assert got == present
        for t in got:
            mask = image_array(masks[t].stamped(stamp)[0])
            assert set(np.unique(mask)) <= {0, 255}
            np.testing.assert_array_equal(mask == 255, lab == t)


def test_frame_id_parameter_fills_an_empty_input_frame_id(ros, start):
    _node, ns = start(stereo=False, frame_id='cameraL')
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    left = ros.publisher(f'{ns}/stereo/left/image_raw', Image)
    assert ros.wait_matched(left)
    empty = publish_pair(left, None, frame_id='')
    assert ros.wait_for(lambda: labels.stamped(empty))
    kept = publish_pair(left, None, frame_id='own_frame')
    assert ros.wait_for(lambda: labels.stamped(kept))
    assert labels.stamped(empty)[0].header.frame_id == 'cameraL'
    assert labels.stamped(kept)[0].header.frame_id == 'own_frame'


@pytest.mark.parametrize('fmt,ext', [('rgb8; jpeg compressed bgr8', '.jpg'), ('png', '.png')])
def test_compressed_input(ros, start, fmt, ext):
    _node, ns = start(stereo=False, use_compressed=True)
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    pub = ros.publisher(f'{ns}/stereo/left/image_raw/compressed', CompressedImage)
    assert ros.wait_matched(pub)
    header, stamp = stamp_header()
    _, data = cv2.imencode(ext, cv2.cvtColor(frame(), cv2.COLOR_RGB2BGR))
    pub.publish(CompressedImage(header=header, format=fmt, data=data.tobytes()))
    assert ros.wait_for(lambda: labels.stamped(stamp))
    assert image_array(labels.stamped(stamp)[0]).shape == (H, W)


def test_best_effort_node_receives_reliable_and_best_effort_publishers(ros, start):
    _node, ns = start(stereo=False, input_reliability='best_effort')
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    for reliability in ('reliable', 'best_effort'):
        pub = ros.publisher(f'{ns}/stereo/left/image_raw', Image, reliability)
        assert ros.wait_matched(pub)
        time.sleep(0.1)
        stamp = publish_pair(pub, None)
        assert ros.wait_for(lambda stamp=stamp: labels.stamped(stamp)), reliability


def test_reliable_node_matches_only_reliable_publishers(ros, start):
    _node, ns = start(stereo=False, input_reliability='reliable')
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    reliable = ros.publisher(f'{ns}/stereo/left/image_raw', Image, 'reliable')
    best_effort = ros.publisher(f'{ns}/stereo/left/image_raw', Image, 'best_effort')
    assert ros.wait_matched(reliable)
    stamp = publish_pair(reliable, None)
    assert ros.wait_for(lambda: labels.stamped(stamp))
    # The documented incompatibility: a reliable reader does not match a best-effort writer.
    assert best_effort.get_subscription_count() == 0
    lost = publish_pair(best_effort, None)
    time.sleep(0.5)
    assert not labels.stamped(lost)


def _bad_images(header):
    def img(encoding, height, width, step, data):
        return Image(header=header, encoding=encoding, height=height, width=width, step=step, data=data)
    good = frame().tobytes()
    return {
        'unsupported encoding': img('32FC1', H, W, W * 4, bytes(H * W * 4)),
        'short data': img('rgb8', H, W, W * 3, good[:-7]),
        'step too small': img('rgb8', H, W, W * 2, good),
        'zero size': img('rgb8', 0, 0, 0, b''),
    }


def test_bad_messages_are_rejected_counted_and_the_node_lives_on(ros, start):
    node, ns = start(stereo=False)
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    diagnostics = ros.collect('/diagnostics', DiagnosticArray)
    left = ros.publisher(f'{ns}/stereo/left/image_raw', Image)
    assert ros.wait_matched(left)
    bad = _bad_images(stamp_header()[0])
    for kind, msg in bad.items():
        left.publish(msg)
        # one at a time, so the latest-frame policy does not drop (instead of reject) any of them
        expected = list(bad).index(kind) + 1
        assert ros.wait_for(lambda n=expected: node.snapshot()['counts'].get('rejected', 0) >= n), kind
    stamp = publish_pair(left, None)
    assert ros.wait_for(lambda: labels.stamped(stamp)), 'node stopped after bad messages'

    def reported():
        mine = [m for m in diagnostics.messages if m.status[0].name.startswith(f'{node.get_name()}:')
                and diagnostic_values(m).get('rejected') == str(len(bad))]
        return mine[-1] if mine else None
    assert ros.wait_for(reported, timeout=3.0)
    values = diagnostic_values(reported())
    assert values['rejected.left'] == str(len(bad)) and values['errors'] == '0'
    assert values['device'] == 'cpu' and 'MFFNet' in values['model']
    for key in ('input_rate_hz', 'processed_rate_hz', 'latency_p50_ms', 'latency_p99_ms', 'precision'):
        assert key in values


def test_bad_compressed_frames_are_rejected(ros, start):
    node, ns = start(stereo=False, use_compressed=True)
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    diagnostics = ros.collect('/diagnostics', DiagnosticArray)
    pub = ros.publisher(f'{ns}/stereo/left/image_raw/compressed', CompressedImage)
    assert ros.wait_matched(pub)
    header, _ = stamp_header()
    jpeg = cv2.imencode('.jpg', frame())[1].tobytes()
    bad = (jpeg[: len(jpeg) // 2], b'not an image at all', b'')  # truncated, undecodable, empty
    for i, data in enumerate(bad):
        pub.publish(CompressedImage(header=header, format='jpeg', data=data))
        assert ros.wait_for(lambda n=i + 1: node.snapshot()['counts']['rejected'] == n)
    header, stamp = stamp_header()
    pub.publish(CompressedImage(header=header, format='jpeg', data=jpeg))
    assert ros.wait_for(lambda: labels.stamped(stamp)), 'node stopped after bad messages'
    assert ros.wait_for(lambda: any(m.status[0].name.startswith(f'{node.get_name()}:')
                                    and diagnostic_values(m).get('rejected.left') == str(len(bad))
                                    for m in list(diagnostics.messages)), timeout=3.0)
    assert 'left' in node.snapshot()['last_error']


def test_burst_faster_than_processing_drops_stale_frames(ros, start):
    node, ns = start(stereo=False)
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    left = ros.publisher(f'{ns}/stereo/left/image_raw', Image, depth=100)
    assert ros.wait_matched(left)
    stamps = [paced(publish_pair(left, None)) for _ in range(40)]
    assert ros.wait_for(lambda: labels.stamped(stamps[-1]), timeout=20)  # the newest is processed
    assert ros.wait_for(lambda: not any(node.pairer.buffered().values()))
    counts = node.snapshot()['counts']
    assert counts['dropped'] > 0 and counts['processed'] < counts['received'], counts
    assert counts['processed'] + counts['dropped'] == counts['received']
    assert node.pairer.counts.max_buffered == 1  # mono keeps one frame: no queue behind the camera
    assert len(labels) == counts['processed']


def test_stereo_burst_drops_stale_pairs_within_bounded_buffers(ros, start):
    node, ns = start(stereo=True, sync_slop=0.0, sync_queue_size=4)
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    left, right = stereo_pubs(ros, ns)
    stamps = [paced(publish_pair(left, right)) for _ in range(30)]
    assert ros.wait_for(lambda: labels.stamped(stamps[-1]), timeout=20)
    assert ros.wait_for(lambda: not any(node.pairer.buffered().values()))
    counts = node.snapshot()['counts']
    assert counts['dropped'] > 0, counts
    # every received frame is accounted for exactly once (DDS itself may lose some: best effort)
    assert 2 * counts['processed'] + counts['dropped'] + counts['unmatched'] == counts['received']
    assert node.pairer.counts.max_buffered <= 4  # bounded by sync_queue_size: no queue grows


def test_stereo_pairs_by_stamp_and_counts_unmatched(ros, start):
    node, ns = start(stereo=True, sync_slop=0.0, sync_queue_size=4)
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    left, right = stereo_pubs(ros, ns)
    header, stamp = stamp_header()
    left.publish(conversions.image_msg(frame(), header, 'rgb8'))
    header.stamp.nanosec += 1_000_000  # 1 ms off: not a pair with sync_slop 0
    right.publish(conversions.image_msg(frame(), header, 'rgb8'))
    assert ros.wait_for(lambda: node.snapshot()['counts'].get('received') == 2)
    time.sleep(0.2)
    assert not labels.stamped(stamp) and node.snapshot()['counts']['processed'] == 0
    paired = publish_pair(left, right)
    assert ros.wait_for(lambda: labels.stamped(paired))
    assert node.snapshot()['counts']['unmatched'] == 2
    node.set_parameters([rclpy_parameter('sync_slop', 0.002)])  # now 1 ms apart is a pair
    header, stamp = stamp_header()
    left.publish(conversions.image_msg(frame(), header, 'rgb8'))
    header.stamp.nanosec += 1_000_000
    right.publish(conversions.image_msg(frame(), header, 'rgb8'))
    assert ros.wait_for(lambda: labels.stamped(stamp))


def test_stereo_with_camera_info_segments_both_images_and_publishes_markers(ros, start):
    node, ns = start(stereo=True, min_instance_area=20)
    tips = ros.collect(f'{ns}/mffseg/tips', PointCloud2)
    markers = ros.collect(f'{ns}/mffseg/tip_markers', MarkerArray)
    left, right = calibrated_stereo_pubs(ros, ns, node)
    stamp = publish_pair(left, right)
    assert ros.wait_for(lambda: tips.stamped(stamp) and markers.messages)
    assert node.snapshot()['counts'].get('segmented_pairs') == 1  # left + right in one forward pass
    array = markers.messages[-1]
    assert array.markers[0].action == Marker.DELETEALL
    points = conversions.cloud_to_tips(tips.stamped(stamp)[0])
    spheres = [m for m in array.markers if m.type == Marker.SPHERE]
    assert len(spheres) == int(np.isfinite(points['z']).sum())  # a sphere per 3-D tip


def test_stereo_with_onnx_runtime_searches_the_left_eye_beside_the_right_eyes_pass(ros):
    """backend auto on the CPU (ONNX Runtime): each pair goes eye by eye through the network, the left
    eye's instruments found on the segmenter's second thread meanwhile; the outputs arrive as ever, the
    ids of ~/instances those of ~/tips."""
    import threading
    import warnings

    from mffseg_ros.inference.segmenter import Segmenter
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        seg = Segmenter.load(None, device='cpu', backend='onnx', threads=1)
    ns = f'/t{next(_namespaces)}'
    node = ros.start_node(namespace=ns, segmenter=seg,
                          parameters={'stereo': True, 'min_instance_area': 20, 'diagnostics_period': 0.2})
    searches, search = [], node.perception.search

    def spied_search(*args, **kwargs):  # the real search, noting the thread it runs on
        searches.append(threading.current_thread().name)
        return search(*args, **kwargs)

    node.perception.search = spied_search
    tips = ros.collect(f'{ns}/mffseg/tips', PointCloud2)
    instances = ros.collect(f'{ns}/mffseg/instances', Image)
    overlay = ros.collect(f'{ns}/mffseg/overlay', Image)
    left, right = calibrated_stereo_pubs(ros, ns, node)
    for seed in range(2):
        stamp = publish_pair(left, right, rgb=frame(seed))
        assert ros.wait_for(lambda s=stamp: tips.stamped(s) and instances.stamped(s) and overlay.stamped(s))
        ids = set(np.unique(image_array(instances.stamped(stamp)[0]))) - {0}
        assert ids == set(conversions.cloud_to_tips(tips.stamped(stamp)[0])['instance_id'].tolist())
    assert len(searches) == 2 and all(name.startswith('mffseg-maps') for name in searches)
    assert node.snapshot()['counts'].get('segmented_pairs') == 2


def test_lazy_outputs_cost_nothing_while_unwatched(ros, start):
    node, ns = start(stereo=False)
    left = ros.publisher(f'{ns}/stereo/left/image_raw', Image)
    assert ros.wait_matched(left)
    publish_pair(left, None)  # nobody listens: not even decoded
    assert ros.wait_for(lambda: node.snapshot()['counts'].get('skipped_idle') == 1)
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    assert ros.wait_for(lambda: node._pubs['labels'].get_subscription_count() == 1)
    stamp = publish_pair(left, None)
    assert ros.wait_for(lambda: labels.stamped(stamp))
    counts = node.snapshot()['counts']
    assert counts['processed'] == 1 and 'rendered.overlay' not in counts
    overlay = ros.collect(f'{ns}/mffseg/overlay', Image)
    assert ros.wait_for(lambda: node._pubs['overlay'].get_subscription_count() == 1)
    stamp = publish_pair(left, None)
    assert ros.wait_for(lambda: overlay.stamped(stamp))
    msg = overlay.stamped(stamp)[0]
    assert msg.encoding == 'rgb8' and (msg.height, msg.width) == (H, W)
    assert node.snapshot()['counts']['rendered.overlay'] == 1


def rclpy_parameter(name, value):
    from rclpy.parameter import Parameter
    return Parameter(name, value=value)
