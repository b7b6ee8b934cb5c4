"""launch/segment.launch.py through a real launch.LaunchService: the node starts with the preset's
parameters, launch-argument overrides and namespace; bad weights end the process with exit code 2.

Runs where launch and launch_ros are importable (a ROS 2 install, or the upstream sources on
PYTHONPATH: see docs/ROS_INTERFACE.md); skipped elsewhere, since they are not on the package index.
"""
import os
import sys
import threading
import time
from pathlib import Path

import pytest

# launch_ros first: it imports launch, and the repo's own launch/ folder would otherwise pass for it.
launch_ros = pytest.importorskip('launch_ros', reason='launch_ros (ROS 2) is not installed: it has no pip wheel')
launch = pytest.importorskip('launch', reason='launch (ROS 2) is not installed: it has no pip wheel')

import rclpy
from launch.actions import IncludeLaunchDescription, RegisterEventHandler
from launch.event_handlers import OnProcessExit, OnProcessIO
from launch.launch_description_sources import PythonLaunchDescriptionSource
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter_client import AsyncParameterClient

LAUNCH_FILE = Path(__file__).resolve().parent.parent / 'launch' / 'segment.launch.py'
START_TIMEOUT_S = 60.0


@pytest.fixture(scope='module', autouse=True)
def ament_prefix(tmp_path_factory):
    """Where mffseg_ros is not colcon-installed, a minimal ament prefix so launch_ros finds the
    `segment_node` executable of this checkout (lib/mffseg_ros/segment_node)."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    try:
        get_package_prefix('mffseg_ros')
        yield
        return
    except PackageNotFoundError:
        pass
    prefix = tmp_path_factory.mktemp('ament_prefix')
    marker = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'mffseg_ros'
    marker.parent.mkdir(parents=True)
    marker.touch()
    (prefix / 'share' / 'mffseg_ros').mkdir()
    exe = prefix / 'lib' / 'mffseg_ros' / 'segment_node'
    exe.parent.mkdir(parents=True)
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} -m mffseg_ros.ros.segment_node "$@"\n')
    exe.chmod(0o755)
    old = os.environ.get('AMENT_PREFIX_PATH')
    os.environ['AMENT_PREFIX_PATH'] = os.pathsep.join(filter(None, [str(prefix), old]))
    yield
    if old is None:
        os.environ.pop('AMENT_PREFIX_PATH', None)
    else:
        os.environ['AMENT_PREFIX_PATH'] = old


def _launch(arguments, watcher=None):
    """Runs the launch file until it ends or `watcher(service)` shuts it down;
    returns (exit codes, the node's output)."""
    exit_codes, output = [], []
    collect = lambda event: output.append(event.text.decode(errors='replace'))
    description = launch.LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
                                 launch_arguments=list(arguments.items())),
        RegisterEventHandler(OnProcessExit(on_exit=lambda event, _: exit_codes.append(event.returncode))),
        RegisterEventHandler(OnProcessIO(on_stdout=collect, on_stderr=collect)),
    ])
    service = launch.LaunchService()
    service.include_launch_description(description)
    thread = None
    if watcher is not None:
        thread = threading.Thread(target=watcher, args=(service,), daemon=True)
        thread.start()
    assert service.run() == 0
    if thread is not None:
        thread.join(timeout=10)
    return exit_codes, ''.join(output)


def test_preset_overrides_and_namespace_reach_the_node():
    seen = {}

    def watch(service):
        context = rclpy.Context()
        rclpy.init(context=context)
        probe = rclpy.create_node('launch_probe', context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(probe)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and not ('stereo' in seen and seen['subscribers']):
                names = probe.get_node_names_and_namespaces()
                if ('mffseg', '/cam1') in names:  # graph discovery is gradual: poll until all is seen
                    seen['topics'] = dict(probe.get_topic_names_and_types())
                    seen['subscribers'] = len(probe.get_subscriptions_info_by_topic(
                        '/ambf/env/cameras/cameraL/ImageData'))
                    client = AsyncParameterClient(probe, '/cam1/mffseg')
                    if 'stereo' not in seen and client.wait_for_services(timeout_sec=5.0):
                        future = client.get_parameters(['stereo', 'device', 'frame_id'])
                        executor.spin_until_future_complete(future, timeout_sec=5.0)
                        if future.done():
                            values = future.result().values
                            seen['stereo'], seen['device'], seen['frame_id'] = (
                                values[0].bool_value, values[1].string_value, values[2].string_value)
                time.sleep(0.2)
        finally:
            executor.shutdown()
            probe.destroy_node()
            rclpy.shutdown(context=context)
            service.shutdown()

    _launch({'preset': 'ambf', 'namespace': 'cam1', 'device': 'cpu'}, watch)
    assert seen.get('stereo') is False, f'node not seen or parameters unread: {seen}'
    assert seen['device'] == 'cpu'           # launch argument overrides the preset
    assert seen['frame_id'] == 'cameraL'     # from config/ambf.yaml
    assert seen['subscribers'] == 1          # the preset's absolute AMBF topic
    assert '/cam1/mffseg/labels' in seen['topics']  # ~/ outputs follow the namespace


def test_missing_weights_end_the_node_with_exit_code_2(tmp_path):
    missing = tmp_path / 'missing.safetensors'
    codes, output = _launch({'weights': str(missing), 'device': 'cpu'})
    assert codes == [2]
    assert str(missing) in output and 'Traceback' not in output
