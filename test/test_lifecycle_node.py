"""The managed node (`segment_node --lifecycle`) driven through its lifecycle services over DDS:
configure loads the model, activate subscribes, deactivate stops work but keeps the model, cleanup
frees it, and a bad configuration fails configure (back to unconfigured) instead of killing the node."""
import itertools
import signal
import subprocess
import sys

import numpy as np
import pytest
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from mffseg_ros.ros import conversions
from mffseg_ros.ros.segment_node import LifecycleSegmentNode

_namespaces = itertools.count(1)
_stamps = itertools.count(1)


ROS_PROBE_NAME = 'lifecycle_probe'  # the probe node of this module's harness (conftest.py)


@pytest.fixture
def managed(ros):
    """managed(**parameters) -> (node, namespace, transition(id) -> success, state() -> label)."""
    created = []

    def _managed(**parameters):
        ns = f'/lc{next(_namespaces)}'
        parameters = {'stereo': False, 'device': 'cpu', 'input_reliability': 'reliable', **parameters}
        node = LifecycleSegmentNode(namespace=ns, context=ros.context,
                                    parameter_overrides=[Parameter(k, value=v) for k, v in parameters.items()])
        ros.executor.add_node(node)
        created.append(node)
        change = ros.probe.create_client(ChangeState, f'{ns}/mffseg/change_state')
        get = ros.probe.create_client(GetState, f'{ns}/mffseg/get_state')
        assert change.wait_for_service(timeout_sec=10) and get.wait_for_service(timeout_sec=10)

        def transition(transition_id):
            return change.call(ChangeState.Request(transition=Transition(id=transition_id)), timeout_sec=120).success

        def state():
            return get.call(GetState.Request(), timeout_sec=10).current_state.label
        return node, ns, transition, state
    yield _managed
    for node in created:
        ros.executor.remove_node(node)
        node.destroy_node()


def publish_frame(pub):
    header = Header(frame_id='cam')
    header.stamp.sec = 3000 + next(_stamps)
    pub.publish(conversions.image_msg(np.full((128, 160, 3), 90, np.uint8), header, 'rgb8'))
    return header.stamp.sec * 1_000_000_000


def test_transitions_load_start_stop_and_free(ros, managed):
    node, ns, transition, state = managed()
    pub = ros.publisher(f'{ns}/stereo/left/image_raw', Image)
    assert state() == 'unconfigured' and node.segmenter is None
    assert pub.get_subscription_count() == 0

    assert transition(Transition.TRANSITION_CONFIGURE) and state() == 'inactive'
    assert node.segmenter is not None  # loaded and warmed up
    labels = ros.collect(f'{ns}/mffseg/labels', Image)
    assert ros.wait_for(lambda: node._pubs['labels'].get_subscription_count() == 1)
    assert pub.get_subscription_count() == 0  # not listening while inactive

    assert transition(Transition.TRANSITION_ACTIVATE) and state() == 'active'
    assert ros.wait_matched(pub)
    stamp = publish_frame(pub)
    assert ros.wait_for(lambda: labels.stamped(stamp), timeout=30)

    model = node.segmenter
    assert transition(Transition.TRANSITION_DEACTIVATE) and state() == 'inactive'
    assert node.segmenter is model and node._worker is None  # work stopped, model kept
    assert ros.wait_for(lambda: pub.get_subscription_count() == 0)

    assert transition(Transition.TRANSITION_ACTIVATE) and state() == 'active'  # again, without reloading
    assert node.segmenter is model and ros.wait_matched(pub)
    stamp = publish_frame(pub)
    assert ros.wait_for(lambda: labels.stamped(stamp), timeout=30)

    assert transition(Transition.TRANSITION_DEACTIVATE) and transition(Transition.TRANSITION_CLEANUP)
    assert state() == 'unconfigured' and node.segmenter is None and not node._pubs
    assert transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN) and state() == 'finalized'


def test_a_bad_configuration_fails_configure_and_the_node_stays(ros, managed):
    node, _ns, transition, state = managed(weights='/nonexistent/model.safetensors')
    assert not transition(Transition.TRANSITION_CONFIGURE)
    assert state() == 'unconfigured' and node.segmenter is None  # and it still answers


def get_state_eventually(client, attempts=6):
    """GetState across processes: a service can be discovered before its response path is matched, so
    the first response may be lost (DDS); asking again is harmless, the state is only read."""
    for _ in range(attempts):
        try:
            return client.call(GetState.Request(), timeout_sec=5).current_state
        except TimeoutError:
            continue
    raise TimeoutError('no answer from get_state')


def test_console_script_flag_starts_the_managed_node(ros):
    """`segment_node --lifecycle` as its own process: unconfigured until told, active after
    configure + activate, and SIGINT ends it with exit code 0."""
    ns = '/lc_process'
    proc = subprocess.Popen([sys.executable, '-m', 'mffseg_ros.ros.segment_node', '--lifecycle', '--ros-args',
                             '-r', f'__ns:={ns}', '-p', 'stereo:=false', '-p', 'device:=cpu',
                             '-p', 'input_reliability:=reliable'],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        change = ros.probe.create_client(ChangeState, f'{ns}/mffseg/change_state')
        get = ros.probe.create_client(GetState, f'{ns}/mffseg/get_state')
        assert get.wait_for_service(timeout_sec=120), 'managed node did not start'
        assert get_state_eventually(get).id == State.PRIMARY_STATE_UNCONFIGURED
        for transition_id in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            assert change.call(ChangeState.Request(transition=Transition(id=transition_id)), timeout_sec=120).success
        assert get_state_eventually(get).id == State.PRIMARY_STATE_ACTIVE
        labels = ros.collect(f'{ns}/mffseg/labels', Image)
        pub = ros.publisher(f'{ns}/stereo/left/image_raw', Image)
        assert ros.wait_matched(pub)
        stamp = publish_frame(pub)
        assert ros.wait_for(lambda: labels.stamped(stamp), timeout=30)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and '[ERROR]' not in output, output
