"""`mffseg play` / play_bag over real DDS: a subscriber in this process receives the bag's frames."""
import threading
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from mffseg_ros import topics
from mffseg_ros.cli import main
from mffseg_ros.data.bags import BagWriter, image_array
from mffseg_ros.ros.play import play_bag
from mffseg_ros.ros.qos import qos_profile

FRAMES, PERIOD_NS, START = 5, 100_000_000, 2_000_000_000  # 10 Hz


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp('play') / 'bag'
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(FRAMES)]
    info = {'width': 32, 'height': 24, 'd': [0.0] * 5, 'k': np.eye(3), 'r': np.eye(3), 'p': np.eye(3, 4)}
    with BagWriter(path, storage='mcap') as bag:
        for i, image in enumerate(images):
            stamp = START + i * PERIOD_NS
            bag.write_image(topics.LEFT_IMAGE, stamp, image, 'left')
            bag.write_camera_info(topics.LEFT_INFO, stamp, info, 'left')
            bag.write_points(topics.GT_TIPS, stamp, [[0.01 * i, 0.0, 0.05]], 'left')
    return path, images


@pytest.fixture
def listener():
    """A subscriber node spun in a background thread; yields {topic: [(stamp_ns, msg)]}."""
    rclpy.init()
    node = rclpy.create_node('test_play_listener')
    received = {}
    for topic, cls in ((topics.LEFT_IMAGE, Image), (topics.LEFT_INFO, CameraInfo), (topics.GT_TIPS, PointCloud2)):
        node.create_subscription(cls, topic, lambda m, t=topic: received.setdefault(t, []).append(
            (m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, m)), qos_profile('reliable', depth=50))
    be = qos_profile('best_effort', depth=50)  # matches both reliable and best-effort publishers
    node.create_subscription(PointCloud2, topics.GT_TIPS, lambda m: received.setdefault('be', []).append(
        (m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, m)), be)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield received
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown()
    thread.join(timeout=5)


def wait_for(received, topic, count, timeout=10.0):
    deadline = time.monotonic() + timeout
    while len(received.get(topic, [])) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return received.get(topic, [])


def test_play_publishes_frames_with_the_bag_stamps_at_the_recorded_rate(bag, listener):
    path, images = bag
    sent = []
    t0 = time.monotonic()
    n = play_bag(None, path, rate=2.0, wait=10.0, progress=False,
                 on_publish=lambda topic, stamp, msg: sent.append((topic, stamp, time.monotonic())))
    assert n == 3 * FRAMES
    # 0.4 s of recording at twice the speed: the last frame goes out about 0.2 s after the first.
    first = min(t for _, _, t in sent)
    last = max(t for topic, _, t in sent if topic == topics.LEFT_IMAGE)
    assert 0.18 <= last - first < 2.0 and time.monotonic() - t0 >= 0.18
    got = wait_for(listener, topics.LEFT_IMAGE, FRAMES)
    assert [s for s, _ in got] == [START + i * PERIOD_NS for i in range(FRAMES)]
    for (_, msg), image in zip(got, images):
        np.testing.assert_array_equal(image_array(msg), image)
    infos = wait_for(listener, topics.LEFT_INFO, FRAMES)
    assert [s for s, _ in infos] == [START + i * PERIOD_NS for i in range(FRAMES)]
    assert infos[0][1].width == 32 and list(infos[0][1].k) == list(np.eye(3).ravel())
    assert len(wait_for(listener, topics.GT_TIPS, FRAMES)) == FRAMES


def test_play_with_an_existing_node_loops_and_filters_topics(bag, listener):
    path, _ = bag
    node = rclpy.create_node('test_play_publisher')
    try:
        n = play_bag(node, path, rate=0, loop=True, max_loops=2, topics=[topics.LEFT_INFO], wait=10.0,
                     progress=False)
    finally:
        node.destroy_node()
    assert n == 2 * FRAMES
    infos = wait_for(listener, topics.LEFT_INFO, 2 * FRAMES)
    assert [s for s, _ in infos] == [START + i * PERIOD_NS for i in range(FRAMES)] * 2
    time.sleep(0.2)
    assert topics.LEFT_IMAGE not in listener  # filtered out


def test_play_cli(bag, listener, capsys):
    path, _ = bag
    assert main(['play', str(path), '--rate', '0', '--wait', '10', '--topics', topics.GT_TIPS]) == 0
    assert f'published {FRAMES} messages' in capsys.readouterr().out
    clouds = wait_for(listener, topics.GT_TIPS, FRAMES)
    assert [s for s, _ in clouds] == [START + i * PERIOD_NS for i in range(FRAMES)]
    assert clouds[-1][1].width == 1
    # A best-effort publisher reaches only the best-effort subscriber.
    wait_for(listener, 'be', FRAMES)
    time.sleep(0.2)  # let stragglers of the first run arrive before clearing
    listener.clear()
    assert main(['play', str(path), '--rate', '0', '--wait', '10', '--topics', topics.GT_TIPS,
                 '--qos', 'best_effort']) == 0
    assert len(wait_for(listener, 'be', FRAMES)) == FRAMES
    assert topics.GT_TIPS not in listener


def test_play_errors_exit_2_with_the_path(bag, tmp_path, capsys):
    path, _ = bag
    assert main(['play', str(tmp_path / 'missing')]) == 2
    assert f'{tmp_path / "missing"}: not a rosbag2 bag' in capsys.readouterr().err
    assert main(['play', str(path), '--topics', '/nope']) == 2
    assert 'no topic /nope in this bag' in capsys.readouterr().err
    assert main(['play', str(path), '--rate', '-1']) == 2
    assert '--rate must be >= 0' in capsys.readouterr().err


def test_an_empty_bag_is_an_error_not_an_endless_loop(tmp_path, capsys):
    from mffseg_ros.data.bags import BagWriter
    with BagWriter(tmp_path / 'empty'):
        pass
    assert main(['play', str(tmp_path / 'empty'), '--loop', '--wait', '0']) == 2
    assert 'the bag holds no messages' in capsys.readouterr().err
