"""How many large frames reach the segment node's callback, and how old they are when they do.

Three processes, as on a robot PC: a camera (this script with --role camera: stereo rgb8 frames and
camera_infos at a set rate), the node (`python -m mffseg_ros.ros.segment_node`, its default
parameters unless --param is given) and this script as the consumer of ~/labels and /diagnostics
(so the node is busy segmenting). Prints one JSON line: frames published, received by the node's
callbacks, superseded (overwritten in DDS before the callback), input age and transport percentiles.

    OMP_NUM_THREADS=1 python scripts/transport_check.py --seconds 25 --rate 5 --size 1280x1024
    python scripts/transport_check.py --camera-reliability best_effort --profile   # shipped XML profile, both ends
    python scripts/transport_check.py --profile node                               # the node's end only
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

NS = '/transport_check'


def camera(args):
    """Publish stereo frames + camera_infos at args.rate until killed; print the count on exit."""
    import signal

    import rclpy
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    from mffseg_ros.ros.conversions import image_msg
    from mffseg_ros.ros.qos import qos_profile
    h, w = args.height, args.width
    rclpy.init(args=[])
    node = rclpy.create_node('camera_sim', namespace=NS)
    qos = qos_profile(args.camera_reliability, depth=1)
    pubs = {side: (node.create_publisher(Image, f'stereo/{side}/image_raw', qos),
                   node.create_publisher(CameraInfo, f'stereo/{side}/camera_info', qos)) for side in ('left', 'right')}
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(2)]
    done = []
    signal.signal(signal.SIGTERM, lambda *_: done.append(1))
    signal.signal(signal.SIGINT, lambda *_: done.append(1))
    # Count from when the node listens (and `auto` QoS has settled): discovery is not transport loss.
    while not done and not all(p[0].get_subscription_count() for p in pubs.values()):
        time.sleep(0.05)
    time.sleep(2.0)
    sent, period, start = 0, 1.0 / args.rate, time.monotonic()
    while not done:
        header = Header(frame_id='left_optical')
        now = time.time_ns()
        header.stamp.sec, header.stamp.nanosec = divmod(now, 1_000_000_000)
        for i, side in enumerate(('left', 'right')):
            image_pub, info_pub = pubs[side]
            info = CameraInfo(header=header, height=h, width=w, distortion_model='plumb_bob', d=[0.0] * 5,
                              k=[1000.0, 0, w / 2, 0, 1000.0, h / 2, 0, 0, 1], r=[1.0, 0, 0, 0, 1, 0, 0, 0, 1],
                              p=[1000.0, 0, w / 2, -4.0 * i, 0, 1000.0, h / 2, 0, 0, 0, 1, 0])
            info_pub.publish(info)
            image_pub.publish(image_msg(frames[sent % 2], header, 'rgb8'))
        sent += 1
        time.sleep(max(0.0, start + sent * period - time.monotonic()))
    print(json.dumps({'published_pairs': sent}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def check(args):
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from mffseg_ros.ros.diagnostics import diagnostic_values
    from mffseg_ros.ros.qos import qos_profile
    env = dict(os.environ)
    env.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
    with_profile = {**env, 'FASTDDS_DEFAULT_PROFILES_FILE': os.path.abspath(args.profile_file)}
    node_env = with_profile if args.profile in ('both', 'node') else env
    camera_env = with_profile if args.profile in ('both', 'camera') else env
    node_cmd = [sys.executable, '-m', 'mffseg_ros.ros.segment_node', '--ros-args', '-r', f'__ns:={NS}']
    for item in args.param:
        node_cmd += ['-p', item]
    node_proc = subprocess.Popen(node_cmd, env=node_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rclpy.init(args=[])
    probe = rclpy.create_node('transport_probe')
    labels, diags = [], []
    probe.create_subscription(Image, f'{NS}/mffseg/labels', lambda m: labels.append(time.time_ns()),
                              qos_profile('reliable', 5))
    probe.create_subscription(DiagnosticArray, '/diagnostics', diags.append, qos_profile('reliable', 10))
    deadline = time.monotonic() + 180
    while not diags and time.monotonic() < deadline:  # model loaded, node up
        rclpy.spin_once(probe, timeout_sec=0.2)
    cam_cmd = [sys.executable, __file__, '--role', 'camera', '--rate', str(args.rate), '--size', args.size,
               '--camera-reliability', args.camera_reliability]
    cam = subprocess.Popen(cam_cmd, env=camera_env, stdout=subprocess.PIPE, text=True)
    end = time.monotonic() + args.seconds + 2.0  # the camera waits 2 s after matching
    while time.monotonic() < end:
        rclpy.spin_once(probe, timeout_sec=0.1)
    during = diagnostic_values(diags[-1])  # before the camera goes (auto QoS then falls back to best effort)
    cam.terminate()
    published = json.loads(cam.communicate(timeout=20)[0].strip().splitlines()[-1])['published_pairs']
    end = time.monotonic() + 2.5  # in-flight frames, one more diagnostics message
    while time.monotonic() < end:
        rclpy.spin_once(probe, timeout_sec=0.1)
    node_proc.terminate()
    node_err = node_proc.communicate(timeout=20)[1]
    values = diagnostic_values(diags[-1])
    out = {'published_images': 2 * published, 'received': int(values['received']),
           'received_share': round(int(values['received']) / max(1, 2 * published), 3),
           'superseded': int(values.get('superseded', 0)), 'processed': int(values['processed']),
           'labels': len(labels), 'dropped': int(values['dropped']), 'unmatched': int(values['unmatched']),
           **{k: float(values[k]) for k in ('input_age_p50_ms', 'input_age_p99_ms', 'transport_p50_ms',
                                            'transport_p99_ms', 'latency_p50_ms', 'transport_share')},
           'input_qos': during.get('input_qos'), 'errors': int(values['errors']),
           'camera_reliability': args.camera_reliability, 'profile': args.profile, 'params': args.param,
           'node_exit': node_proc.returncode, 'node_errors_logged': node_err.count('[ERROR]')}
    print(json.dumps(out))
    probe.destroy_node()
    rclpy.try_shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--role', choices=('check', 'camera'), default='check')
    parser.add_argument('--seconds', type=float, default=25.0)
    parser.add_argument('--rate', type=float, default=5.0)
    parser.add_argument('--size', default='1280x1024', help='WIDTHxHEIGHT')
    parser.add_argument('--camera-reliability', choices=('reliable', 'best_effort'), default='reliable')
    parser.add_argument('--profile', nargs='?', const='both', default='none',
                        choices=('none', 'both', 'node', 'camera'),
                        help='which processes use the shipped Fast DDS profile (--profile alone: both)')
    parser.add_argument('--profile-file', default=os.path.join(os.path.dirname(__file__), '..', 'config',
                                                               'fastdds_large_images.xml'))
    parser.add_argument('--param', action='append', default=[], help='node parameter NAME:=VALUE (repeatable)')
    args = parser.parse_args()
    args.width, args.height = (int(v) for v in args.size.lower().split('x'))
    camera(args) if args.role == 'camera' else check(args)


if __name__ == '__main__':
    main()
