"""Node parameters: presets load, bad values are rejected at start-up (clean exit 2, one line) and
at run time through the real parameter services (with a reason, never half-applied)."""
import subprocess
import sys
from pathlib import Path

import pytest
import rclpy
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter_client import AsyncParameterClient

from mffseg_ros.model.classes import TASK_CLASSES
from mffseg_ros.ros.params import ParameterError

REPO = Path(__file__).resolve().parent.parent
PRESETS = sorted((REPO / 'config').glob('*.yaml'))


ROS_PROBE_NAME = 'param_probe'  # the probe node of this module's harness (conftest.py)


def test_presets_exist():
    assert {p.stem for p in PRESETS} >= {'segment', 'dvrk', 'ambf', 'raven', 'endovis_bag'}


@pytest.mark.parametrize('preset', PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_and_validates(ros, segmenter, preset):
    node = ros.start_node(namespace=f'/preset_{preset.stem}', segmenter=segmenter,
                          cli_args=['--ros-args', '--params-file', str(preset)])
    try:
        subscribed = {s.topic_name for s in node._subs.values()}
        if preset.stem == 'ambf':
            assert not node.cfg.stereo and node.cfg.frame_id == 'cameraL'
            assert '/ambf/env/cameras/cameraL/ImageData' in subscribed
        if preset.stem == 'dvrk':
            assert node.cfg.input_reliability == 'reliable'
            assert '/jhu_daVinci/right/image_raw' in subscribed
        if preset.stem == 'segment':  # the default file repeats the built-in defaults
            from mffseg_ros.ros.params import NodeConfig
            assert node.cfg == NodeConfig()
    finally:
        ros.stop_node(node)


@pytest.mark.parametrize('overrides,expected', [
    ({'sync_slop': 5.0}, 'sync_slop'),               # outside the descriptor's range
    ({'stereo': 'yes'}, 'stereo'),                   # wrong type
    ({'device': 'tpu'}, 'device'),                   # not an allowed value
    ({'precision': 'int4'}, 'precision'),
    ({'backend': 'tensorflow'}, 'backend'),
    ({'threads': -1}, 'threads'),
    ({'input_height': 100, 'input_width': 96}, 'multiple of 32'),
    ({'input_height': 64}, 'set both'),
])
def test_bad_parameters_fail_at_start_up(ros, segmenter, overrides, expected):
    with pytest.raises(ParameterError, match=expected):
        ros.start_node(namespace='/bad', parameters=overrides, segmenter=segmenter)


@pytest.fixture(scope='module')
def running(ros, segmenter):
    node = ros.start_node(namespace='/params', segmenter=segmenter)
    executor = SingleThreadedExecutor(context=ros.context)
    client_node = rclpy.create_node('param_client', context=ros.context)
    executor.add_node(client_node)
    client = AsyncParameterClient(client_node, '/params/mffseg')
    assert client.wait_for_services(timeout_sec=10.0)

    def call(future):
        executor.spin_until_future_complete(future, timeout_sec=10.0)
        assert future.done()
        return future.result()
    yield node, client, call
    executor.shutdown()
    client_node.destroy_node()
    ros.stop_node(node)


def _double(name, value):
    return ParameterMsg(name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value))


def _integer(name, value):
    return ParameterMsg(name=name, value=ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value))


def _string(name, value):
    return ParameterMsg(name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value))


def test_run_time_change_is_applied(running):
    node, client, call = running
    result = call(client.set_parameters([_double('sync_slop', 0.05), _integer('min_instance_area', 50),
                                         _integer('track_min_frames', 3), _double('min_instrument_score', 0.8),
                                         _integer('max_instruments', 2)]))
    assert all(r.successful for r in result.results)
    assert node.cfg.sync_slop == 0.05 and node.pairer.slop_ns == 50_000_000
    assert node.cfg.min_instance_area == 50
    assert node.perception.config.min_instance_area == 50 and node.perception.tracker.min_frames == 3
    assert node.perception.config.min_instrument_score == 0.8
    assert node.perception.config.max_instruments == 2


@pytest.mark.parametrize('parameter,reason', [
    (_double('sync_slop', -0.1), 'sync_slop'),
    (_integer('min_instance_area', 0), 'min_instance_area'),
    (_double('min_instrument_score', 1.5), 'min_instrument_score'),
    (_integer('max_instruments', -1), 'max_instruments'),
    (_string('device', 'cuda:0'), 'read-only'),
    (_string('min_instance_area', 'many'), 'type'),
])
def test_bad_run_time_changes_are_rejected_with_a_reason(running, parameter, reason):
    node, client, call = running
    before = node.cfg
    result = call(client.set_parameters([parameter]))
    assert not result.results[0].successful
    assert reason in result.results[0].reason
    assert node.cfg == before


def test_a_rejected_change_is_never_half_applied(running):
    node, client, call = running
    before = node.cfg
    result = call(client.set_parameters_atomically([_integer('min_instance_area', 77), _double('sync_slop', -1.0)]))
    assert not result.result.successful
    assert node.cfg == before and node.get_parameter('min_instance_area').value == before.min_instance_area


def test_class_names_are_read_only_parameters(running):
    _node, client, call = running
    result = call(client.get_parameters(['classes.type', 'classes.parts']))
    assert list(result.values[0].string_array_value) == list(TASK_CLASSES['type'])
    assert list(result.values[1].string_array_value) == list(TASK_CLASSES['parts'])
    rejected = call(client.set_parameters([ParameterMsg(name='classes.type', value=ParameterValue(
        type=ParameterType.PARAMETER_STRING_ARRAY, string_array_value=['a']))]))
    assert not rejected.results[0].successful


def test_node_exits_2_with_one_line_on_missing_weights():
    """The entry point as users run it, in a fresh process (one only: importing torch is slow)."""
    proc = subprocess.run([sys.executable, '-m', 'mffseg_ros.ros.segment_node', '--ros-args',
                           '-p', 'weights:=/nonexistent/model.safetensors', '-p', 'device:=cpu'],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if 'error' in line]
    assert len(errors) == 1 and '/nonexistent/model.safetensors' in errors[0], proc.stderr
    assert 'Traceback' not in proc.stderr
