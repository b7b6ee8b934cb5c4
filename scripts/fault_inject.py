"""Malformed-input run against `segment_node` in its own process: compressed bombs, oversized, tiny,
truncated and garbage frames on both eyes, bad camera_infos, then valid stereo frames that must all
get labels AND tips. Prints one JSON line: what was sent, what the node counted, its peak RSS.

    OMP_NUM_THREADS=1 python scripts/fault_inject.py --messages 5000
"""
import argparse
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import cv2
import numpy as np

NS = '/fault_inject'
H, W = 256, 320


def png_declaring(width, height, rows=None):
    """A small PNG declaring width x height black pixels (deflate shrinks the rows ~1000-fold)."""
    def chunk(kind, body):
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body) & 0xFFFFFFFF)
    z = zlib.compressobj(9)
    data = b''.join(z.compress(b'\0' * (1 + width)) for _ in range(height if rows is None else rows)) + z.flush()
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
            + chunk(b'IDAT', data) + chunk(b'IEND', b''))


def jpeg_declaring(width, height):
    data = bytearray(cv2.imencode('.jpg', np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    sof = data.index(b'\xff\xc0')
    data[sof + 5:sof + 9] = height.to_bytes(2, 'big') + width.to_bytes(2, 'big')
    return bytes(data)


def bad_images():
    """(name, format, data) of compressed images the node must reject."""
    jpeg = cv2.imencode('.jpg', np.full((H, W, 3), 120, np.uint8))[1].tobytes()
    return [
        ('png bomb 8000x8000', 'png', png_declaring(8000, 8000)),
        ('jpeg declaring 65000x60000', 'jpeg', jpeg_declaring(65000, 60000)),
        ('png beyond the OpenCV limit', 'png', png_declaring(100_000, 100_000, rows=1)),
        ('truncated jpeg', 'jpeg', jpeg[:len(jpeg) // 2]),
        ('garbage', 'jpeg', bytes(range(256)) * 4),
        ('empty', 'jpeg', b''),
        ('jpeg 1x1', 'jpeg', cv2.imencode('.jpg', np.zeros((1, 1, 3), np.uint8))[1].tobytes()),
        ('png 2x2', 'png', cv2.imencode('.png', np.zeros((2, 2, 3), np.uint8))[1].tobytes()),
        ('format says png, data is jpeg', 'png', jpeg),
        ('depth image', '16UC1; compressedDepth png', cv2.imencode('.png', np.zeros((H, W), np.uint16))[1].tobytes()),
    ]


def camera_info_fields(baseline=0.0, **changes):
    fields = dict(height=H, width=W, distortion_model='plumb_bob', d=[0.0] * 5,
                  k=[300.0, 0, W / 2, 0, 300.0, H / 2, 0, 0, 1], r=[1.0, 0, 0, 0, 1, 0, 0, 0, 1],
                  p=[300.0, 0, W / 2, -300.0 * baseline, 0, 300.0, H / 2, 0, 0, 0, 1, 0])
    fields.update(changes)
    return fields


BAD_INFOS = [dict(d=[0.1, 0.01, 0.001]), dict(d=[0.1] * 6), dict(d=[math.nan] * 5), dict(r=[math.nan] + [0.0] * 8),
             dict(r=[2.0, 0, 0, 0, 1, 0, 0, 0, 1]), dict(p=[0.0] * 12), dict(p=[math.inf] + [0.0] * 11),
             dict(height=2 * H, width=2 * W)]


def valid_jpeg(seed):
    rgb = np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)
    cv2.rectangle(rgb, (40, 60), (280, 110), (200, 200, 210), -1)
    return cv2.imencode('.jpg', rgb)[1].tobytes()


def peak_rss_mb(pid):
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
    return float('nan')


def run(args):
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
    from std_msgs.msg import Header

    from mffseg_ros.ros.diagnostics import diagnostic_values
    from mffseg_ros.ros.qos import qos_profile
    node_cmd = [sys.executable, '-m', 'mffseg_ros.ros.segment_node', '--ros-args', '-r', f'__ns:={NS}',
                '-p', 'stereo:=true', '-p', 'use_compressed:=true', '-p', 'input_reliability:=reliable',
                '-p', 'diagnostics_period:=0.2', '-p', 'device:=cpu', '-p', 'min_instance_area:=50']
    node = subprocess.Popen(node_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rclpy.init(args=[])
    probe = rclpy.create_node('fault_probe')
    reliable = qos_profile('reliable', 100)
    images = {s: probe.create_publisher(CompressedImage, f'{NS}/stereo/{s}/image_raw/compressed', reliable)
              for s in ('left', 'right')}
    infos = {s: probe.create_publisher(CameraInfo, f'{NS}/stereo/{s}/camera_info', reliable) for s in ('left', 'right')}
    labels, tips, diags = {}, {}, []

    def stamp_of(msg):
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
    probe.create_subscription(Image, f'{NS}/mffseg/labels', lambda m: labels.__setitem__(stamp_of(m), m),
                              qos_profile('reliable', 50))
    probe.create_subscription(PointCloud2, f'{NS}/mffseg/tips', lambda m: tips.__setitem__(stamp_of(m), m),
                              qos_profile('reliable', 50))
    probe.create_subscription(DiagnosticArray, '/diagnostics', diags.append, qos_profile('reliable', 50))

    def spin_until(predicate, timeout):
        end = time.monotonic() + timeout
        while not predicate() and time.monotonic() < end:
            rclpy.spin_once(probe, timeout_sec=0.01)
        return predicate()

    def latest():
        mine = [m for m in diags if m.status[0].name.startswith('mffseg:')]
        return diagnostic_values(mine[-1]) if mine else {}
    assert spin_until(lambda: all(p.get_subscription_count() for p in (*images.values(), *infos.values())), 180), \
        'node did not start'
    counter = iter(range(1, 10**9))

    def header():
        h = Header(frame_id='left_optical')
        h.stamp.sec = 5000 + next(counter)
        return h

    def send_info(side, **changes):
        infos[side].publish(CameraInfo(header=header(), **camera_info_fields(0.005 if side == 'right' else 0.0,
                                                                            **changes)))

    def send_pair(left_fmt, left_data, right_fmt, right_data):
        h = header()
        images['left'].publish(CompressedImage(header=h, format=left_fmt, data=left_data))
        images['right'].publish(CompressedImage(header=h, format=right_fmt, data=right_data))
        return h.stamp.sec * 1_000_000_000

    def valid_pair(seed):
        stamp = send_pair('jpeg', valid_jpeg(seed), 'jpeg', valid_jpeg(seed + 1))
        return spin_until(lambda: stamp in labels and stamp in tips, 60)

    send_info('left')
    send_info('right')
    assert valid_pair(0), 'no outputs for the first valid frame'
    bad = bad_images()
    sent = {'bad_images': 0, 'bad_camera_infos': 0, 'valid_pairs_after': 0}
    started = time.monotonic()
    i = 0
    while sent['bad_images'] + sent['bad_camera_infos'] < args.messages:
        if i % 10 == 9:
            send_info('left' if i % 20 == 9 else 'right', **BAD_INFOS[(i // 10) % len(BAD_INFOS)])
            sent['bad_camera_infos'] += 1
        else:
            (_, lf, ld), (_, rf, rd) = bad[i % len(bad)], bad[(i + 3) % len(bad)]
            send_pair(lf, ld, rf, rd)
            sent['bad_images'] += 2
        i += 1
        spin_until(lambda: False, args.pace)  # the pace of a misbehaving camera, with our subscriptions served
    bad_phase_s = time.monotonic() - started
    spin_until(lambda: False, 1.0)
    missing = []
    for k in range(args.valid):
        if valid_pair(100 + 2 * k):
            sent['valid_pairs_after'] += 1
        else:
            missing.append(k)
    spin_until(lambda: False, 0.6)
    values = latest()
    rss = peak_rss_mb(node.pid)
    alive = node.poll() is None
    node.send_signal(signal.SIGINT)
    try:
        err = node.communicate(timeout=20)[1]
    except subprocess.TimeoutExpired:
        node.kill()
        err = node.communicate()[1]
    result = {
        'sent': sent, 'bad_phase_s': round(bad_phase_s, 1), 'node_alive_after': alive,
        'node_peak_rss_mb': round(rss, 1), 'exit_code_on_sigint': node.returncode,
        'error_lines_logged': err.count('[ERROR]'), 'tracebacks': err.count('Traceback'),
        'valid_pairs_without_labels_and_tips': missing,
        **{k: int(values.get(k, 0)) for k in ('received', 'processed', 'rejected', 'rejected.left', 'rejected.right',
                                               'errors', 'dropped', 'unmatched', 'superseded',
                                               'camera_info_rejected')},
        'calibration.left': values.get('calibration.left'), 'calibration.right': values.get('calibration.right'),
    }
    result['every_bad_image_rejected'] = result['rejected'] == sent['bad_images']
    print(json.dumps(result))
    probe.destroy_node()
    rclpy.try_shutdown()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--messages', type=int, default=5000, help='malformed messages (images + camera_infos)')
    parser.add_argument('--valid', type=int, default=10, help='valid stereo frames after the bad ones')
    parser.add_argument('--pace', type=float, default=0.004, help='seconds between malformed messages')
    result = run(parser.parse_args())
    ok = (result['node_alive_after'] and result['every_bad_image_rejected'] and result['errors'] == 0
          and not result['valid_pairs_without_labels_and_tips'] and result['exit_code_on_sigint'] == 0)
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    main()
