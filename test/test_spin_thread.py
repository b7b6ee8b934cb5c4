"""SpinThread: callbacks run while it spins; the spinning thread has ended before the executor shuts down
(otherwise it may submit a ready callback to the shut-down pool: 'cannot schedule new futures after
shutdown', printed as a thread traceback), and callbacks still running end before it too."""
import gc
import time

import rclpy
from rclpy.executors import MultiThreadedExecutor

from mffseg_ros.ros.spin_thread import SpinThread


def test_thread_ends_before_the_executor_shuts_down(capfd):
    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    alive_at_shutdown = []

    class RecordingExecutor(MultiThreadedExecutor):
        def shutdown(self, *args, **kwargs):
            alive_at_shutdown.append(spinner._thread.is_alive())
            return super().shutdown(*args, **kwargs)

    executor = RecordingExecutor(num_threads=2, context=context)
    node = rclpy.create_node('spin_thread_probe', context=context)
    ticks = []
    node.create_timer(0.001, lambda: ticks.append(1))  # keeps callbacks ready until the very end
    executor.add_node(node)
    spinner = SpinThread(executor, name='test-executor').start()
    deadline = time.monotonic() + 10
    while len(ticks) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert len(ticks) >= 20
    finally:
        spinner.stop()
        node.destroy_node()
        rclpy.shutdown(context=context)
    assert alive_at_shutdown == [False]
    executor = spinner = None  # drop the last references before collecting
    gc.collect()  # rclpy prints unretrieved callback exceptions when their tasks are collected
    assert 'never retrieved' not in capfd.readouterr().err
