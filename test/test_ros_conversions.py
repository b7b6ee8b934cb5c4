"""The node's building blocks without DDS: message <-> numpy, stereo pairing, parameter rules,
diagnostics. Real rclpy message types throughout."""
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from mffseg_ros.data.bags import image_array
from mffseg_ros.errors import DataError, ImageFormatError
from mffseg_ros.ros import conversions, params
from mffseg_ros.ros.diagnostics import NodeStats, diagnostic_array, diagnostic_values
from mffseg_ros.ros.sync import Frame, StereoPairer


def header(sec=5, nanosec=7, frame_id='cam'):
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = sec, nanosec
    return h


# --- images ------------------------------------------------------------------------------------
def test_image_msg_round_trip_keeps_header_and_pixels():
    rgb = np.random.default_rng(0).integers(0, 255, (6, 9, 3), dtype=np.uint8)
    msg = conversions.image_msg(rgb, header(), 'rgb8')
    assert (msg.height, msg.width, msg.step, msg.encoding) == (6, 9, 27, 'rgb8')
    assert msg.header.stamp.sec == 5 and msg.header.frame_id == 'cam'
    np.testing.assert_array_equal(image_array(msg), rgb)
    np.testing.assert_array_equal(conversions.decode_image_msg(msg), rgb)
    mono = conversions.image_msg(rgb[..., 0], header(), 'mono8')
    assert mono.step == 9 and image_array(mono).shape == (6, 9)


def test_bgr8_and_mono16_messages_decode_to_rgb():
    rgb = np.random.default_rng(1).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    bgr = conversions.image_msg(np.ascontiguousarray(rgb[..., ::-1]), header(), 'bgr8')
    np.testing.assert_array_equal(conversions.decode_image_msg(bgr), rgb)
    grey16 = np.full((4, 5), 65535, np.uint16)
    msg = Image(height=4, width=5, encoding='mono16', step=10, data=grey16.tobytes())
    assert (conversions.decode_image_msg(msg) == 255).all()


def test_bad_image_message_raises_image_format_error():
    msg = Image(height=4, width=5, encoding='rgb8', step=15, data=bytes(10))
    with pytest.raises(ImageFormatError):
        conversions.decode_image_msg(msg)


def test_calibration_from_camera_info():
    info = CameraInfo()
    with pytest.raises(DataError, match='not calibrated'):
        conversions.calibration(info)  # all zeros: an uncalibrated camera
    info.p = [300.0, 0, 80, -1.5, 0, 300.0, 60, 0, 0, 0, 1, 0]
    cal = conversions.calibration(info)
    assert cal.P.shape == (3, 4) and cal.P[0, 3] == -1.5 and cal.rectify is None and cal.image_size is None
    info.height, info.width, info.d = 120, 160, [0.1, 0.0, 0.0]  # plumb_bob takes 5
    with pytest.raises(DataError, match='D has 3 coefficients'):
        conversions.calibration(info)
    assert conversions.camera_info_key(info) != conversions.camera_info_key(CameraInfo())


def test_stamp_ns():
    assert conversions.stamp_ns(header(3, 25)) == 3_000_000_025


# --- pairing -----------------------------------------------------------------------------------
def frame(stamp_ns):
    return Frame(stamp_ns, time.monotonic(), msg=stamp_ns)


def test_exact_and_slop_pairing_takes_the_newest_pair():
    pairer = StereoPairer(stereo=True, slop_ns=2_000_000, depth=10)
    for t in (100_000_000, 200_000_000, 300_000_000):
        pairer.push('left', frame(t))
        pairer.push('right', frame(t + 1_000_000))  # 1 ms later: within the 2 ms slop
    left, right = pairer.pop_newest(timeout=0)
    assert (left.msg, right.msg) == (300_000_000, 301_000_000)
    assert pairer.counts.dropped == 4 and pairer.counts.unmatched == 0  # two older complete pairs
    assert pairer.buffered() == {'left': 0, 'right': 0}


def test_nearest_partner_wins_and_out_of_slop_frames_are_unmatched():
    pairer = StereoPairer(stereo=True, slop_ns=5, depth=10)
    pairer.push('left', frame(100))
    pairer.push('right', frame(90))    # 10 ns off: no partner
    assert pairer.pop_newest(timeout=0) is None
    pairer.push('left', frame(200))
    pairer.push('right', frame(197))
    pairer.push('right', frame(201))   # nearer
    left, right = pairer.pop_newest(timeout=0)
    assert (left.msg, right.msg) == (200, 201)
    assert pairer.counts.unmatched == 3 and pairer.counts.dropped == 0  # 100, 90 and 197


def test_buffers_are_bounded():
    pairer = StereoPairer(stereo=True, slop_ns=0, depth=3)
    for t in range(10):
        pairer.push('left', frame(t))
    assert pairer.buffered()['left'] == 3 and pairer.counts.unmatched == 7
    assert pairer.counts.max_buffered == 3


def test_a_complete_pair_releases_older_frames_at_once():
    """While the worker is busy, buffers hold only what is newer than the newest complete pair."""
    pairer = StereoPairer(stereo=True, slop_ns=0, depth=10)
    for t in range(20):
        pairer.push('left', frame(t))
        pairer.push('right', frame(t))
    assert pairer.buffered() == {'left': 1, 'right': 1} and pairer.counts.max_buffered == 2
    assert pairer.counts.dropped == 38 and pairer.counts.unmatched == 0
    assert pairer.pop_newest(timeout=0)[0].msg == 19


def test_mono_keeps_only_the_newest_frame():
    pairer = StereoPairer(stereo=False)
    for t in range(5):
        pairer.push('left', frame(t))
    assert pairer.pop_newest(timeout=0)[0].msg == 4
    assert pairer.counts.dropped == 4 and pairer.counts.max_buffered == 1
    assert pairer.pop_newest(timeout=0.01) is None


def test_close_releases_a_waiting_worker():
    pairer = StereoPairer(stereo=False)
    pairer.close()
    assert pairer.pop_newest(timeout=5.0) is None


# --- parameters --------------------------------------------------------------------------------
def test_defaults_are_valid_and_descriptors_carry_ranges():
    assert params.validate(params.NodeConfig()) == []
    decl = {name: (default, d) for name, default, d in params.declarations()}
    assert decl['sync_slop'][1].floating_point_range[0].to_value == 1.0
    assert decl['min_instance_area'][1].integer_range[0].from_value == 1
    assert decl['weights'][1].read_only and not decl['sync_slop'][1].read_only
    assert 'best_effort' in decl['input_reliability'][1].additional_constraints
    assert decl['left_image_topic'][0] == 'stereo/left/image_raw'  # relative: namespaces apply


@pytest.mark.parametrize('values,expected', [
    ({'device': 'gpu'}, 'device'),
    ({'device': 'cuda:x'}, 'device'),
    ({'branch': 'side'}, 'branch'),
    ({'input_reliability': 'sometimes'}, 'input_reliability'),
    ({'sync_slop': -0.5}, 'sync_slop'),
    ({'input_height': 96, 'input_width': 100}, 'multiple of 32'),
    ({'input_height': 96, 'input_width': 128, 'input_scale': 0.5}, 'not both'),
    ({'left_image_topic': ' '}, 'empty topic'),
])
def test_invalid_configurations_are_explained(values, expected):
    with pytest.raises(params.ParameterError, match=expected):
        params.config_from(values)


def test_valid_device_spellings():
    for device in ('auto', 'cpu', 'cuda', 'cuda:1'):
        assert params.config_from({'device': device}).device == device


# --- diagnostics -------------------------------------------------------------------------------
def test_diagnostics_report_counts_latency_and_levels():
    stats = NodeStats()
    for latency in (0.010, 0.020, 0.030, 0.040, 1.0):
        stats.received('left')
        stats.processed(latency)
    info = {'device': 'cpu', 'precision': 'fp32', 'model': 'MFFNet test'}
    snap = stats.snapshot()
    arr = diagnostic_array(header().stamp, 'mffseg', snap, info)
    values = diagnostic_values(arr)
    assert arr.status[0].level == DiagnosticStatus.OK
    assert values['processed'] == '5' and values['latency_p50_ms'] == '30.0'
    assert float(values['latency_p99_ms']) > 900 and values['device'] == 'cpu'
    stats.rejected('left', "left: unsupported image encoding '32FC1'")
    arr = diagnostic_array(header().stamp, 'mffseg', stats.snapshot(), info, previous_counts=snap['counts'])
    assert arr.status[0].level == DiagnosticStatus.WARN and '32FC1' in arr.status[0].message
    stats.error('RuntimeError: boom')
    arr = diagnostic_array(header().stamp, 'mffseg', stats.snapshot(), info, previous_counts=snap['counts'])
    assert arr.status[0].level == DiagnosticStatus.ERROR
    assert diagnostic_values(arr)['last_error'] == 'RuntimeError: boom'


def test_no_input_is_a_warning():
    arr = diagnostic_array(header().stamp, 'mffseg', NodeStats().snapshot(), {'device': 'cpu'})
    assert arr.status[0].level == DiagnosticStatus.WARN and 'no input' in arr.status[0].message


def test_rejected_frames_are_not_counted_again_when_dropped_or_unmatched():
    mono = StereoPairer(stereo=False)
    mono.push('left', Frame(1, 0.0, None, rejected=True))  # counted as rejected when it arrived
    mono.push('left', frame(2))
    mono.push('left', frame(3))
    assert mono.counts.dropped == 1  # only the valid frame 2
    stereo = StereoPairer(stereo=True, slop_ns=0, depth=10)
    for stamp, left_rejected in ((10, True), (20, False)):
        stereo.push('left', Frame(stamp, 0.0, None, rejected=left_rejected))
        stereo.push('right', frame(stamp))
    stereo.push('left', frame(25))  # never gets a partner
    stereo.push('left', frame(30))
    stereo.push('right', frame(30))
    left, right = stereo.pop_newest(timeout=0)
    assert (left.stamp_ns, right.stamp_ns) == (30, 30)
    assert stereo.counts.dropped == 1 + 2  # the pair at 10 without its rejected left, the pair at 20
    assert stereo.counts.unmatched == 1    # 25
