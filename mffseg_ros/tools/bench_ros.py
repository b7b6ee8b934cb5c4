"""End to end through ROS 2: frames published over DDS at a set rate into the segment node; its outputs
received by a subscriber. Measures publish->receive latency (header stamps are the publish wall time,
which the node copies to its outputs), the node's own receive->publish latency (from /diagnostics),
processed rate, drops, the node's CPU use and GPU memory."""
import os
import resource
import time

import cv2
import numpy as np

from mffseg_ros.errors import MffsegError
from mffseg_ros.ros.conversions import image_msg
from mffseg_ros.ros.diagnostics import diagnostic_values
from mffseg_ros.ros.harness import RosHarness
from mffseg_ros.ros.node_process import NodeProcess
from mffseg_ros.ros.qos import qos_profile as qos
from mffseg_ros.scalars import parse_scalar
from mffseg_ros.sizes import parse_size

NAMESPACE = '/mffseg_bench'
FOCAL_PX, BASELINE_M = 1035.0, 0.0041  # a da Vinci-like stereo rig (see the SCARED calibration)
STARTUP_TIMEOUT_S = 180.0  # model load and the first (slow) inference
DRAIN_S = 1.0  # time after the last publish for in-flight outputs to arrive


def parse_frame_size(text):
    return parse_size(text, what='--frame-size', minimum=32)


def synthetic_frames(height, width, count=4, seed=0):
    """Tissue-coloured noise with a grey instrument bar from the border: content for the node to chew."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        noise = rng.normal(0, 1, (max(height // 16, 2), max(width // 16, 2), 3)).astype(np.float32)
        rgb = np.clip(np.array([170, 70, 60]) + 25 * cv2.resize(noise, (width, height)), 0, 255).astype(np.uint8)
        tip = (int(rng.uniform(0.4, 0.8) * width), int(rng.uniform(0.3, 0.7) * height))
        cv2.line(rgb, (0, int(rng.uniform(0.2, 0.8) * height)), tip, (190, 190, 200), max(3, height // 12))
        frames.append(rgb)
    return frames


def camera_info(height, width, side, header):
    from sensor_msgs.msg import CameraInfo
    cx, cy = width / 2, height / 2
    tx = -FOCAL_PX * BASELINE_M if side == 'right' else 0.0
    return CameraInfo(header=header, height=height, width=width, distortion_model='plumb_bob',
                      d=[0.0] * 5, k=[FOCAL_PX, 0, cx, 0, FOCAL_PX, cy, 0, 0, 1], r=[1.0, 0, 0, 0, 1, 0, 0, 0, 1],
                      p=[FOCAL_PX, 0, cx, tx, 0, FOCAL_PX, cy, 0, 0, 0, 1, 0])


def dds_profile(args):
    """Applies --fastdds-profile (before any DDS participant of this process or the node exists) and
    returns the profile file in effect, for the report ('' = Fast DDS's defaults)."""
    if getattr(args, 'fastdds_profile', False):
        from mffseg_ros.ros.segment_node import use_large_image_profile
        use_large_image_profile()
    return os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE', '')


def _node_parameters(args, opts):
    params = {'stereo': bool(args.stereo), 'device': str(opts['device']), 'diagnostics_period': 1.0,
              'publish_overlay': False, 'publish_tip_markers': False,
              'input_reliability': 'reliable' if args.reliable else 'best_effort'}
    if 'fp16' in opts['precisions'] and opts['device'].type == 'cuda':
        params['precision'] = 'fp16'
    if args.weights:
        params['weights'] = str(args.weights)
    for item in args.node_param:
        if ':=' not in item:
            raise MffsegError(f'--node-param {item!r}: expected NAME:=VALUE')
        name, value = item.split(':=', 1)
        params[name.strip()] = parse_scalar(value.strip())
    return params


class _NodeInProcess:
    """The node in this process (shares the harness's DDS context); CPU time is the whole process's."""

    def __init__(self, ros, params):
        self.node = ros.start_node(namespace=NAMESPACE, parameters=params)

    def check_alive(self):
        pass

    def cpu_seconds(self):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def gpu_memory_mb(self):
        import torch
        return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None

    def stop(self):
        pass  # the harness destroys its nodes


def ros_rows(args, opts):
    """One row of end-to-end results per publish rate (one node, started and warmed up once)."""
    import rclpy  # noqa: F401  (fail early with a clear message when ROS 2 is missing)
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    height, width = parse_frame_size(args.frame_size)
    rates = parse_rates(args.rate)
    if not args.duration > 0:
        raise MffsegError(f'--duration must be positive, got {args.duration}')
    params = _node_parameters(args, opts)
    frames = synthetic_frames(height, width)
    sides = ('left', 'right') if args.stereo else ('left',)
    received = []  # (stamp_ns, receive wall ns)
    diagnostics = []

    def on_labels(msg):
        received.append((msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, time.time_ns()))

    def on_diagnostics(msg):
        if msg.status and msg.status[0].name.startswith('mffseg'):
            diagnostics.append(diagnostic_values(msg))

    profile = dds_profile(args)
    with RosHarness(probe_name='mffseg_bench_probe') as ros:  # rclpy.init(args=[]): our NAME:=VALUE stay ours
        node = (_NodeInProcess(ros, params) if args.node == 'inprocess'
                else NodeProcess(namespace=NAMESPACE, parameters=params))
        try:
            probe = ros.probe
            probe.create_subscription(Image, f'{NAMESPACE}/mffseg/labels', on_labels, qos('reliable', 50))
            probe.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, qos('reliable', 10))
            if args.stereo:  # watching ~/tips makes the node match, triangulate and publish 3-D tips
                probe.create_subscription(PointCloud2, f'{NAMESPACE}/mffseg/tips', lambda m: None,
                                          qos('reliable', 10))
            reliability = 'reliable' if args.reliable else 'best_effort'
            image_pubs = {s: ros.publisher(f'{NAMESPACE}/stereo/{s}/image_raw', Image, reliability, 1)
                          for s in sides}
            info_pubs = {s: ros.publisher(f'{NAMESPACE}/stereo/{s}/camera_info', CameraInfo, 'best_effort', 1)
                         for s in sides} if args.stereo else {}
            from std_msgs.msg import Header
            messages = [{s: image_msg(f, Header(frame_id=f'bench_{s}'), 'rgb8') for s in sides} for f in frames]

            def publish(i):
                stamp_ns = time.time_ns()
                for side, msg in messages[i % len(messages)].items():
                    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
                    image_pubs[side].publish(msg)
                    if side in info_pubs:
                        info_pubs[side].publish(camera_info(height, width, side, msg.header))
                return stamp_ns

            # Warm-up: publish at the first rate until the node answers (model load, first inference).
            deadline, i = time.monotonic() + STARTUP_TIMEOUT_S, 0
            while not received:
                node.check_alive()
                if time.monotonic() > deadline:
                    raise MffsegError(f'segment node gave no output within {STARTUP_TIMEOUT_S:.0f} s')
                publish(i)
                i += 1
                time.sleep(1.0 / rates[0])
            time.sleep(DRAIN_S)
            rows = []
            for rate in rates:  # one node, one warm-up, a measured window per rate
                node.check_alive()
                received.clear()
                diag_start = len(diagnostics)
                cpu0, t0 = node.cpu_seconds(), time.monotonic()
                published = []
                for k in range(max(1, round(args.duration * rate))):
                    delay = t0 + k / rate - time.monotonic()  # fixed schedule: a late publish shifts nothing
                    if delay > 0:
                        time.sleep(delay)
                    published.append(publish(k))
                send_time = time.monotonic() - t0
                time.sleep(DRAIN_S)
                cpu1, t1 = node.cpu_seconds(), time.monotonic()
                sent = set(published)
                e2e = np.array([(r - s) / 1e6 for s, r in list(received) if s in sent])
                last_diag = diagnostics[-1] if len(diagnostics) > diag_start else {}
                rows.append({
                    'size': f'{height}x{width}', 'stereo': bool(args.stereo), 'rate_hz': rate,
                    'node': args.node, 'node_params': params, 'input_reliability': params['input_reliability'],
                    'published': len(published), 'received': len(e2e), 'dropped': len(published) - len(e2e),
                    'publish_rate_hz': len(published) / max(send_time, 1e-9),
                    'processed_rate_hz': len(e2e) / max(send_time, 1e-9),
                    'e2e_latency_p50_ms': float(np.percentile(e2e, 50)) if len(e2e) else None,
                    'e2e_latency_p99_ms': float(np.percentile(e2e, 99)) if len(e2e) else None,
                    'node_latency_p50_ms': _float(last_diag.get('latency_p50_ms')),
                    'node_latency_p99_ms': _float(last_diag.get('latency_p99_ms')),
                    'node_dropped_total': _float(last_diag.get('dropped')),
                    'node_cpu_percent': 100 * (cpu1 - cpu0) / max(t1 - t0, 1e-9),
                    'cpu_scope': 'node process' if args.node == 'subprocess' else 'whole process (node + publisher)',
                    'gpu_mem_mb': node.gpu_memory_mb(), 'dds_profile': os.path.basename(profile) or 'defaults',
                })
        finally:
            node.stop()
    return rows


def parse_rates(text):
    """'30' or '30,60' -> [30.0, 60.0]; MffsegError unless every rate is a positive number."""
    try:
        rates = [float(t) for t in str(text).split(',') if t.strip()]
    except ValueError:
        rates = []
    if not rates or any(not r > 0 for r in rates):
        raise MffsegError(f'--rate {text!r}: expected positive rates in Hz, e.g. 30 or 30,60')
    return rates


def _float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
