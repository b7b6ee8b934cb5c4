"""`mffseg demo`: the whole pipeline on a synthetic stereo bag, the way a lab runs it next to a robot.

1. generate (or reuse) a synthetic stereo bag with exact ground truth (labels, 3-D tips);
2. start the segment node with the default configuration (its own process, like `ros2 launch`);
3. replay the bag through it over DDS;
4. subscribe to its outputs like a downstream tool tracker, print each frame's instruments (2-D and 3-D);
5. summarise: frames, processed rate, latency, Dice against ground truth, and the instrument-level
   scores (tip precision AND recall, instruments per frame, types, id switches, 2-D/3-D tip and axis
   errors: evaluation/instrument_scores.py); write a
   contact sheet of overlays, an overlay video and summary.json into the results folder.
"""
import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from mffseg_ros import topics
from mffseg_ros.data.bags import bag_info, cloud_points, image_array, read_bag
from mffseg_ros.errors import MffsegError
from mffseg_ros.evaluation.bag_eval import score_frame
from mffseg_ros.evaluation.instrument_scores import InstrumentScorer, format_summary, match_radius
from mffseg_ros.inference.instruments import SOURCE_NAMES
from mffseg_ros.inference.segmenter import resolve_device
from mffseg_ros.inference.tip_records import rotate_x_axis
from mffseg_ros.model.weights import read_metadata
from mffseg_ros.paths import share_file
from mffseg_ros.ros.node_process import NodeProcess
from mffseg_ros.sizes import parse_size
from mffseg_ros.tools.bag_cli import write_synth_bag
from mffseg_ros.visualize import contact_sheet, save_png, type_name

log = logging.getLogger(__name__)
NODE_TOPIC = '/mffseg'
INPUT_TOPICS = [topics.LEFT_INFO, topics.RIGHT_INFO, topics.LEFT_IMAGE, topics.RIGHT_IMAGE]


def add_arguments(p):
    p.add_argument('--out', type=Path, default=Path('results/demo'), help='results folder (default: %(default)s)')
    p.add_argument('--frames', type=int, default=40, help='frames in the synthetic bag (default: %(default)s)')
    p.add_argument('--size', default='512x640', help='frame size HxW (default: %(default)s)')
    p.add_argument('--rate', type=float, default=2.5, help='camera frame rate in Hz (default: %(default)s)')
    p.add_argument('--seed', type=int, default=7, help='scene seed (default: %(default)s)')
    p.add_argument('--device', default='auto', help='auto, cpu or cuda[:N] (default: %(default)s)')
    p.add_argument('--weights', default='', help="weights file ('' = the shipped default)")
    p.add_argument('--in-process', action='store_true',
                   help='run the node inside this process instead of its own (for tests and debugging)')
    p.add_argument('--quiet', action='store_true', help='no per-frame lines')


def run(args):
    size = parse_size(args.size, what='--size', minimum=32)
    if args.frames < 1 or not args.rate > 0:
        raise MffsegError('--frames must be >= 1 and --rate > 0')
    check_setup(args.out, args.weights, args.device)
    summary = run_demo(args.out, frames=args.frames, size=size, rate=args.rate,
                       seed=args.seed, device=args.device, weights=args.weights,
                       in_process=args.in_process, verbose=not args.quiet)
    return 0 if summary['frames_processed'] > 0 else 1


def check_setup(out, weights, device):
    """Fail in one line before any work: results folder, weights file, device."""

    if Path(out).exists() and not Path(out).is_dir():
        raise MffsegError(f'{out}: --out exists and is not a folder')
    if weights:
        read_metadata(weights)  # WeightsError with the path and the reason
    resolve_device(device)


# ----------------------------------------------------------------------------------- the bag
def ensure_bag(path, *, frames, size, seed, rate):
    """Reuses the bag at `path` when it was made with the same settings, else (re)writes it."""

    want = {'mffseg.source': 'synth', 'mffseg.seed': seed, 'mffseg.size': f'{size[0]}x{size[1]}',
            'mffseg.rate_hz': rate}
    if (path / 'metadata.yaml').is_file():
        try:
            info = bag_info(path)
            same = all(str(info['custom_data'].get(k)) == str(v) for k, v in want.items())
            if same and info['topics'].get(topics.LEFT_IMAGE, (None, 0))[1] == frames:
                print(f'[demo] reusing {path}')
                return path
        except MffsegError:
            pass
    print(f'[demo] writing a synthetic stereo bag: {frames} frames {size[0]}x{size[1]} at {rate:g} Hz -> {path}')
    write_synth_bag(path, frames=frames, size=size, seed=seed, rate=rate, overwrite=True)
    return path


def ground_truth(path):
    """{stamp_ns: {'type', 'parts', 'tips'}} of the bag's left ground truth."""

    gt = {}
    keys = {topics.GT_TYPE: 'type', topics.GT_PARTS: 'parts', topics.GT_TIPS: 'tips'}
    for topic, stamp, msg in read_bag(path, topics=list(keys)):
        gt.setdefault(stamp, {})[keys[topic]] = cloud_points(msg) if topic == topics.GT_TIPS else image_array(msg)
    return gt


# ----------------------------------------------------------------------------------- scoring
def pose_axes(pose_array):
    """geometry_msgs/PoseArray from ~/tip_poses -> N x 3 shaft axes (the poses' x axes; NaN without 3-D)."""
    axes = []
    for pose in pose_array.poses:
        q = pose.orientation
        axis = rotate_x_axis((q.x, q.y, q.z, q.w))
        axes.append(axis if np.isfinite(pose.position.z) else np.full(3, np.nan))
    return np.array(axes).reshape(-1, 3)


def percentile(values, q):
    return float(np.percentile(values, q)) if len(values) else None


# ----------------------------------------------------------------------------------- the node
class Tracker:
    """What a downstream tool tracker does: subscribe to the node's outputs, keyed by header stamp."""

    def __init__(self, node):
        # ROS modules (rclpy and messages) are imported where the demo starts ROS, after the one-line
        # set-up checks: a bad --out or --weights is reported before rclpy loads.
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseArray
        from sensor_msgs.msg import Image, PointCloud2

        from mffseg_ros.ros.qos import qos_profile as qos

        self.received = {}  # stamp -> {'t': wall time of labels, 'labels', 'parts', 'tips', 'overlay'}
        self.diagnostics = None
        self.lock = threading.Lock()
        reliable = qos('reliable', depth=20)
        for name, msg_type in (('labels', Image), ('parts', Image), ('tips', PointCloud2), ('overlay', Image),
                               ('tip_poses', PoseArray)):
            node.create_subscription(msg_type, f'{NODE_TOPIC}/{name}',
                                     lambda msg, name=name: self._store(name, msg), reliable)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, reliable)

    def _store(self, name, msg):
        from mffseg_ros.ros.conversions import cloud_to_tips, decode_image_msg, stamp_ns

        now = time.monotonic()
        if name == 'tips':
            value = cloud_to_tips(msg)
        elif name == 'tip_poses':
            value = pose_axes(msg)
        elif name == 'overlay':
            value = decode_image_msg(msg)  # RGB, whatever the encoding
        else:
            value = image_array(msg)
        with self.lock:
            entry = self.received.setdefault(stamp_ns(msg.header), {})
            entry[name] = value
            entry.setdefault('t', {})[name] = now

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if 'mffseg' in status.name:
                self.diagnostics = {kv.key: kv.value for kv in status.values}


def start_in_process_node(context, executor, device, weights):
    import yaml
    from rclpy.parameter import Parameter

    from mffseg_ros.ros.segment_node import SegmentNode
    preset = yaml.safe_load(share_file('config', 'endovis_bag.yaml').read_text())['/**']['ros__parameters']
    overrides = [Parameter(k, value=v) for k, v in preset.items()]
    overrides += [Parameter('device', value=device), Parameter('weights', value=weights)]
    node = SegmentNode(context=context, parameter_overrides=overrides)
    executor.add_node(node)
    return node


def run_demo(out, *, frames=40, size=(512, 640), rate=2.5, seed=7, device='auto', weights='',
             in_process=False, verbose=True):
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from mffseg_ros.ros.play import play_bag
    from mffseg_ros.ros.spin_thread import SpinThread

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')  # keep the demo off the lab network
    bag = ensure_bag(out / 'synth_bag', frames=frames, size=size, seed=seed, rate=rate)
    gt = ground_truth(bag)

    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    client = rclpy.create_node('mffseg_demo_tracker', context=context)
    executor.add_node(client)
    tracker = Tracker(client)
    spinner = SpinThread(executor, name='demo-executor').start()
    node_proc = in_node = None
    published = {}
    try:
        print('[demo] starting the segment node (default model, bag-replay preset config/endovis_bag.yaml)')
        if in_process:
            in_node = start_in_process_node(context, executor, device, weights)
        else:
            # The bag-replay preset, as `ros2 launch mffseg_ros segment.launch.py preset:=endovis_bag` would.
            params = {'device': device, **({'weights': weights} if weights else {})}
            node_proc = NodeProcess(params_file=share_file('config', 'endovis_bag.yaml'), parameters=params,
                                    log_path=out / 'segment_node.log')
        deadline = time.monotonic() + 180
        while client.count_subscribers(topics.LEFT_IMAGE) < 1 or client.count_publishers(f'{NODE_TOPIC}/tips') < 1:
            if node_proc is not None and node_proc.failed():
                raise MffsegError(node_proc.failed())
            if time.monotonic() > deadline:
                raise MffsegError('the segment node did not come up within 180 s'
                                  + (f' (log: {node_proc.log_path})' if node_proc else ''))
            time.sleep(0.1)

        def on_publish(topic, stamp, msg):
            if topic == topics.LEFT_IMAGE:
                published[stamp] = time.monotonic()

        print(f'[demo] replaying {bag} at {rate:g} Hz through the node')
        t0 = time.monotonic()
        play_bag(client, bag, rate=1.0, topics=INPUT_TOPICS, wait=2.0, on_publish=on_publish)
        # Let the last frame through (a CPU forward pass can take a while).
        last = max(published.values(), default=t0)
        settle = time.monotonic() + 30
        while time.monotonic() < settle:
            with tracker.lock:
                done = max(published) in tracker.received and 'labels' in tracker.received[max(published)]
                newest = max((e['t'].get('labels', 0) for e in tracker.received.values()), default=0)
            if done or (newest and time.monotonic() - max(newest, last) > 5):
                break
            time.sleep(0.1)
        time.sleep(1.2)  # one more diagnostics period
        wall = time.monotonic() - t0
    finally:
        if in_node is not None:
            executor.remove_node(in_node)
            in_node.destroy_node()
        if node_proc is not None:
            node_proc.stop()
        spinner.stop()
        client.destroy_node()
        rclpy.try_shutdown(context=context)
    return summarise(out, tracker, published, gt, size, wall, verbose)


def summarise(out, tracker, published, gt, size, wall, verbose):

    scorer = InstrumentScorer(match_px=match_radius(size))
    rows, overlays = [], []
    for stamp in sorted(tracker.received):
        entry = tracker.received[stamp]
        if 'labels' not in entry or stamp not in gt:
            continue
        tips = entry.get('tips', np.zeros(0))
        scores = score_frame(entry['labels'], entry.get('parts'), gt[stamp])
        axes = entry.get('tip_poses')
        scorer.add(tips, gt[stamp]['tips'], axes if axes is not None and len(axes) == len(tips) else None)
        latency = (entry['t']['labels'] - published[stamp]) * 1000 if stamp in published else None
        rows.append({'stamp_ns': stamp, 'latency_ms': latency, 'instruments': len(tips),
                     'visible': len(gt[stamp]['tips']), **scores})
        if 'overlay' in entry:
            overlays.append((stamp, entry['overlay']))
        if verbose:
            desc = '; '.join(
                f"#{t['instance_id']} {type_name(int(t['type_id']))} ({t['type_score']:.2f}) "
                f"{SOURCE_NAMES.get(int(t['source']), '?')} uv=({t['u']:.0f},{t['v']:.0f})"
                + (f" xyz=({t['x'] * 1000:+.1f},{t['y'] * 1000:+.1f},{t['z'] * 1000:.1f}) mm"
                   if np.isfinite(t['z']) else ' xyz=n/a')
                for t in tips) or 'no instruments'
            print(f"[demo] t={stamp / 1e9:6.2f}s  dice={scores['dice_binary']:.3f}  "
                  f"{len(tips)} instrument(s) for {len(gt[stamp]['tips'])} visible: {desc}")

    latencies = [r['latency_ms'] for r in rows if r['latency_ms'] is not None]
    summary = {
        'frames_published': len(published),
        'frames_processed': len(rows),
        'frames_dropped': len(published) - len(rows),
        'processed_rate_hz': len(rows) / wall if wall > 0 else None,
        'latency_publish_to_receive_ms': {'p50': percentile(latencies, 50), 'p99': percentile(latencies, 99)},
        'node_diagnostics': tracker.diagnostics,
        'dice_binary_mean': float(np.mean([r['dice_binary'] for r in rows])) if rows else None,
        'dice_parts_mean': (float(np.mean([r['dice_parts'] for r in rows if 'dice_parts' in r]))
                            if any('dice_parts' in r for r in rows) else None),
        'instruments': scorer.summary(),
        'frames': rows,
    }
    (out / 'summary.json').write_text(json.dumps(summary, indent=1))
    if overlays:
        step = max(1, len(overlays) // 8)
        picked = overlays[::step][:8]
        sheet = contact_sheet([img for _, img in picked], cols=4, labels=[f't={s / 1e9:.1f}s' for s, _ in picked])
        save_png(out / 'contact_sheet.png', sheet)
        write_video(out / 'overlay.mp4', [img for _, img in overlays])
    print_summary(summary, out)
    return summary


def write_video(path, frames, fps=5):
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, (w, h))
    if not writer.isOpened():
        log.warning('could not open a video writer for %s; skipping the video', path)
        return
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()


def print_summary(s, out):
    def fmt(v, unit='', digits=1):
        return 'n/a' if v is None else f'{v:.{digits}f}{unit}'

    lat = s['latency_publish_to_receive_ms']
    diag = s['node_diagnostics'] or {}
    print('\n[demo] summary')
    print(f"  frames           {s['frames_processed']} processed of {s['frames_published']} published "
          f"({s['frames_dropped']} dropped by the latest-frame policy)")
    print(f"  processed rate   {fmt(s['processed_rate_hz'], ' Hz', 2)}")
    print(f"  latency          publish->receive p50 {fmt(lat['p50'], ' ms')}, p99 {fmt(lat['p99'], ' ms')}")
    if diag:
        keys = [k for k in diag if 'latency' in k or k in ('device', 'precision', 'model')]
        for k in keys:
            print(f'  node {k:<12} {diag[k]}')
    print(f"  Dice             binary {fmt(s['dice_binary_mean'], '', 3)}, parts {fmt(s['dice_parts_mean'], '', 3)}")
    for line in format_summary(s['instruments']):
        print(f'  {line}')
    print(f'  results          {out}/summary.json, contact_sheet.png, overlay.mp4')
