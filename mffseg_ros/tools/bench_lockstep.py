"""The node against its own network, one stereo pair at a time (`mffseg bench --ros --lockstep N`).

For each of N pairs: publish the pair and its camera_infos (reliable), wait until every output the
node publishes for it has arrived (every output topic is subscribed, so nothing is skipped as unwatched),
then time the bare network (`Segmenter.forward`, same weights, backend and threads as the node) on the
same pair, as one batch (with ONNX Runtime the node passes the eyes one at a time, which costs the same
network time: docs/BENCHMARKS.md). Nothing overlaps: the node and the bare network never run at
the same time, and they alternate pair by pair, so load from other processes hits both alike and the
ratio of the medians holds. Latency = the pair's publish (its header stamp) -> the last output received;
also to the tips (what a tool tracker waits for).
"""
import importlib
import os
import time

import numpy as np
from tqdm import tqdm

from mffseg_ros.errors import MffsegError
from mffseg_ros.ros.conversions import image_msg
from mffseg_ros.ros.harness import RosHarness
from mffseg_ros.ros.node_process import NodeProcess
from mffseg_ros.tools.bench_ros import NAMESPACE, STARTUP_TIMEOUT_S, _node_parameters, dds_profile, parse_frame_size

OUTPUT_TIMEOUT_S = 60.0  # one pair through a CPU node takes about a second
SETTLE_S = 0.05  # after the last expected output, for any other output of the same pair still in flight
DISTINCT_PAIRS = 6  # rendered scenes cycled through (rendering 1280x1024 pairs takes a while)


def rendered_pairs(height, width, count=DISTINCT_PAIRS, seed=3):
    """Synthetic stereo scenes with two or three instruments, and the rig that saw them: the node
    finds instruments, matches them across the eyes and triangulates, as on a real endoscope."""
    from mffseg_ros.data.synth import SceneGenerator, StereoRig
    rig = StereoRig.endovis_like().resized(width, height)
    scenes = SceneGenerator(rig, seed=seed, num_instruments=(2, 3))
    frames = [scenes.frame(i * 11) for i in range(count)]
    return rig, [(f.left, f.right) for f in frames]


def _camera_info_msg(rig, side, header):
    from sensor_msgs.msg import CameraInfo
    info = rig.camera_info(side)
    return CameraInfo(header=header, height=info['height'], width=info['width'],
                      distortion_model=info['distortion_model'], d=info['D'], k=info['K'], r=info['R'],
                      p=info['P'])


def _output_topics(probe, prefix, timeout=10.0):
    """{topic: message type} of everything the node publishes under `prefix` (found over DDS)."""
    def found():
        return {name: types[0] for name, types in probe.get_topic_names_and_types() if name.startswith(prefix)}

    if not RosHarness.wait_for(lambda: prefix + 'overlay' in found(), timeout, period=0.2):
        return {}
    time.sleep(0.5)  # the node creates all its publishers together: let discovery see the rest
    return {name: _message_class(t) for name, t in found().items()}


def _message_class(type_name):
    """'sensor_msgs/msg/Image' -> the class (rosidl_runtime_py, which does this, is not on PyPI)."""
    package, _, name = type_name.split('/')
    return getattr(importlib.import_module(f'{package}.msg'), name)


def lockstep_rows(args, opts):
    import rclpy  # noqa: F401  (fail early with a clear message when ROS 2 is missing)
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    from mffseg_ros.data.synth import calibration_options
    from mffseg_ros.inference.segmenter import Segmenter

    if args.lockstep < 1:
        raise MffsegError(f'--lockstep must be a positive number of pairs, got {args.lockstep}')
    height, width = parse_frame_size(args.frame_size)
    params = _node_parameters(args, opts)
    params.update({'stereo': True, 'input_reliability': 'reliable', 'publish_overlay': True,
                   'publish_tip_markers': True})
    if args.threads:
        params.setdefault('threads', args.threads)
    rig, pairs = rendered_pairs(height, width)
    # The bare network the node runs: the same weights, backend, precision, branch and threads.
    seg = Segmenter.load(params.get('weights'), device=str(opts['device']), backend=params.get('backend', 'auto'),
                         precision=params.get('precision', 'fp32'), branch=params.get('branch', 'main'),
                         threads=params.get('threads') or 1, **calibration_options(params.get('precision')))
    batches = [seg.preprocess(list(pair)) for pair in pairs]
    seg.forward(batches[0])  # warm-up (ONNX export and session)

    arrivals = {}  # stamp_ns -> {topic: receive wall ns}

    def on_output(topic):
        def record(msg):
            header = msg.markers[0].header if hasattr(msg, 'markers') else getattr(msg, 'header', None)
            if header is None:  # an empty MarkerArray carries no stamp
                return
            stamp = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
            arrivals.setdefault(stamp, {})[topic] = time.time_ns()
        return record

    profile = dds_profile(args)
    with RosHarness(probe_name='mffseg_lockstep_probe') as ros:
        node = NodeProcess(namespace=NAMESPACE, parameters=params)
        try:
            probe = ros.probe
            images = {s: ros.publisher(f'{NAMESPACE}/stereo/{s}/image_raw', Image, 'reliable', 1)
                      for s in ('left', 'right')}
            infos = {s: ros.publisher(f'{NAMESPACE}/stereo/{s}/camera_info', CameraInfo, 'reliable', 1)
                     for s in ('left', 'right')}
            messages = [{s: image_msg(rgb, Header(frame_id=f'bench_{s}'), 'rgb8') for s, rgb in zip(images, pair)}
                        for pair in pairs]
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            topics = {}
            while not topics:
                node.check_alive()
                if time.monotonic() > deadline:
                    raise MffsegError(f'segment node not up within {STARTUP_TIMEOUT_S:.0f} s')
                topics = _output_topics(probe, f'{NAMESPACE}/mffseg/')
            for topic, msg_type in topics.items():
                probe.create_subscription(msg_type, topic, on_output(topic), 10)

            def send(i):
                stamp_ns = time.time_ns()
                for side, msg in messages[i % len(messages)].items():
                    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
                    infos[side].publish(_camera_info_msg(rig, side, msg.header))
                    images[side].publish(msg)
                return stamp_ns

            def wait_outputs(stamp, timeout):
                """Receive times of the pair's outputs, once the last of each group is in: the overlay
                (last of the 2-D images) and the tip markers (last of the outputs that wait for stereo)."""
                last = {f'{NAMESPACE}/mffseg/overlay', f'{NAMESPACE}/mffseg/tip_markers'}
                if not ros.wait_for(lambda: last <= arrivals.get(stamp, {}).keys(), timeout):
                    return None
                time.sleep(SETTLE_S)
                return arrivals.pop(stamp)

            # Warm-up pairs: DDS discovery, the node's first frames, the camera_info checks.
            for i in range(3):
                node.check_alive()
                if wait_outputs(send(i), STARTUP_TIMEOUT_S if i == 0 else OUTPUT_TIMEOUT_S) is None:
                    raise MffsegError(f'warm-up pair {i}: no overlay or tip markers from the node ({node.log_tail()})')
            e2e, tips, network, outputs = [], [], [], []
            for i in tqdm(range(args.lockstep), desc='lockstep pairs', unit='pair'):
                node.check_alive()
                stamp = send(i)
                got = wait_outputs(stamp, OUTPUT_TIMEOUT_S)
                if got is None:
                    raise MffsegError(f'pair {i}: no overlay or tip markers from the node within '
                                      f'{OUTPUT_TIMEOUT_S:.0f} s ({node.log_tail()})')
                e2e.append((max(got.values()) - stamp) / 1e6)
                tips.append((got[f'{NAMESPACE}/mffseg/tips'] - stamp) / 1e6)
                outputs.append(len(got))
                start = time.perf_counter()
                seg.forward(batches[i % len(batches)])
                network.append(1000 * (time.perf_counter() - start))
        finally:
            node.stop()
    e2e_ms, net_ms = float(np.median(e2e)), float(np.median(network))
    return [{'size': f'{height}x{width}', 'pairs': args.lockstep, 'backend': seg.backend_name,
             'network_input': 'x'.join(map(str, batches[0].shape[-2:])), 'threads': params.get('threads'),
             'outputs_per_pair': float(np.median(outputs)), 'topics_subscribed': len(topics),
             'e2e_p50_ms': e2e_ms, 'e2e_p90_ms': float(np.percentile(e2e, 90)),
             'tips_p50_ms': float(np.median(tips)),
             'network_p50_ms': net_ms, 'network_p90_ms': float(np.percentile(network, 90)),
             'ratio': e2e_ms / net_ms, 'dds_profile': os.path.basename(profile) or 'defaults', 'node_params': params}]
