"""SIGINT / SIGTERM while the node is segmenting: exit code 0, quickly, and no ERROR in its log
(the worker is stopped before the rclpy context goes, so nothing publishes into a dead context).
The node runs as its own process, as `segment_node` does on a robot."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from mffseg_ros.ros import conversions

H, W = 480, 640
EXIT_WITHIN_S = 2.0


ROS_PROBE_NAME = 'shutdown_probe'  # the probe node of this module's harness (conftest.py)


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_signal_while_processing_exits_cleanly(ros, signum):
    ns = f'/shutdown_{signum.name.lower()}'
    node = subprocess.Popen(
        [sys.executable, '-m', 'mffseg_ros.ros.segment_node', '--ros-args', '-r', f'__ns:={ns}',
         '-p', 'stereo:=false', '-p', 'device:=cpu', '-p', 'input_reliability:=reliable',
         # a large network input: each frame takes seconds, so the signal surely comes mid-frame
         '-p', 'input_height:=1024', '-p', 'input_width:=1280'],
        env={**os.environ, 'PYTHONUNBUFFERED': '1'}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        labels = ros.collect(f'{ns}/mffseg/labels', Image)
        overlay = ros.collect(f'{ns}/mffseg/overlay', Image)  # more work in each frame
        pub = ros.publisher(f'{ns}/stereo/left/image_raw', Image)
        assert ros.wait_matched(pub, timeout=120), 'node did not start'
        rgb = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
        sent = 0

        def publish():
            nonlocal sent
            sent += 1
            header = Header(frame_id='cam')
            header.stamp.sec = sent
            pub.publish(conversions.image_msg(rgb, header, 'rgb8'))
        deadline = time.monotonic() + 120
        while not (labels and overlay) and time.monotonic() < deadline:  # busy: frames keep coming
            publish()
            time.sleep(0.2)
        assert labels and overlay
        publish()
        time.sleep(0.5)  # the worker has the newest frame in hand
        signalled = time.monotonic()
        node.send_signal(signum)
        output, _ = node.communicate(timeout=30)
        took = time.monotonic() - signalled
    finally:
        if node.poll() is None:
            node.kill()
            node.communicate()
    assert node.returncode == 0, output
    assert '[ERROR]' not in output and 'Traceback' not in output, output
    assert took < EXIT_WITHIN_S, f'{signum.name}: exit took {took:.2f} s'
