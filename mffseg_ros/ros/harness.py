"""Run segmentation nodes and a probe node in one process over real DDS: publish frames, collect
what the node publishes. Used by the node tests and handy for benchmarks and scripted checks.

    with RosHarness() as ros:
        node = ros.start_node(namespace='/cam', parameters={'stereo': False})
        labels = ros.collect('/cam/mffseg/labels', Image)
        pub = ros.publisher('/cam/stereo/left/image_raw', Image)
        pub.publish(...); ros.wait_for(lambda: len(labels))
"""
import time

import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter

from mffseg_ros.ros.qos import qos_profile
from mffseg_ros.ros.segment_node import SegmentNode
from mffseg_ros.ros.spin_thread import SpinThread


class RosHarness:
    """Its own rclpy Context (so it coexists with others in a process) and an executor thread."""

    def __init__(self, probe_name='mffseg_probe'):
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)  # not sys.argv: NAME:=VALUE would become remaps
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.probe = rclpy.create_node(probe_name, context=self.context)
        self.executor.add_node(self.probe)
        self.nodes = []
        self._spinner = SpinThread(self.executor, name='harness-executor').start()

    def start_node(self, *, namespace='', parameters=None, segmenter=None, cli_args=None):
        overrides = [Parameter(name, value=value) for name, value in (parameters or {}).items()]
        node = SegmentNode(segmenter=segmenter, namespace=namespace, context=self.context,
                           parameter_overrides=overrides, cli_args=cli_args)
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def stop_node(self, node):
        self.executor.remove_node(node)
        self.nodes.remove(node)
        node.destroy_node()

    def publisher(self, topic, msg_type, reliability='reliable', depth=10):
        return self.probe.create_publisher(msg_type, topic, qos_profile(reliability, depth))

    def collect(self, topic, msg_type, reliability='reliable', depth=50):
        """A Collector that stores every message received on `topic` from now on."""
        collector = Collector()
        collector.subscription = self.probe.create_subscription(
            msg_type, topic, collector.messages.append, qos_profile(reliability, depth))
        return collector

    def unsubscribe(self, collector):
        self.probe.destroy_subscription(collector.subscription)

    @staticmethod
    def wait_for(predicate, timeout=10.0, period=0.01):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(period)
        return bool(predicate())

    def wait_matched(self, publisher, count=1, timeout=10.0):
        return self.wait_for(lambda: publisher.get_subscription_count() >= count, timeout)

    def close(self):
        self._spinner.stop()  # first: waits for running callbacks, so none sees a destroyed node
        for node in list(self.nodes):
            self.nodes.remove(node)
            node.destroy_node()
        self.probe.destroy_node()
        rclpy.shutdown(context=self.context)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Collector:
    """Messages received on one topic, in arrival order."""

    def __init__(self):
        self.messages = []  # list.append is atomic: safe from the executor thread
        self.subscription = None

    def __len__(self):
        return len(self.messages)

    def stamped(self, stamp_ns):
        """Messages whose header stamp equals `stamp_ns`."""
        return [m for m in list(self.messages)
                if m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec == stamp_ns]
