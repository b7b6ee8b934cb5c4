"""`mffseg bag`: write rosbag2 bags of stereo frames, camera_info and ground truth.

    mffseg bag endovis <instrument_dataset_N> <out> [--no-crop] [--rate HZ] [--storage mcap|sqlite3]
    mffseg bag synth <out> --frames N [--size HxW] [--seed S] [--rate HZ] [--storage mcap|sqlite3]

Topics are those of `mffseg_ros.topics`. Header stamps and bag times start at START_NS and are spaced
1/rate apart (EndoVis frames are 1 Hz samples, hence its default rate of 1 Hz).
"""
import argparse
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mffseg_ros import topics
from mffseg_ros.data.bags import LEFT_FRAME_ID, RIGHT_FRAME_ID, STORAGES, BagWriter
from mffseg_ros.data.calibration import load_endovis_calibration
from mffseg_ros.data.endovis import EndoVis2017
from mffseg_ros.data.synth import SceneGenerator, StereoRig
from mffseg_ros.errors import DataError
from mffseg_ros.evaluation.ground_truth import ground_truth_records
from mffseg_ros.sizes import parse_size

# Stamps start at 1 s rather than 0: a zero stamp means "no time" to many ROS tools.
START_NS = 1_000_000_000


def _stamp(index, rate):
    return START_NS + round(index * 1e9 / rate)


def _write_stereo(bag, stamp, left, right, info_left, info_right):
    bag.write_image(topics.LEFT_IMAGE, stamp, left, LEFT_FRAME_ID)
    bag.write_image(topics.RIGHT_IMAGE, stamp, right, RIGHT_FRAME_ID)
    bag.write_camera_info(topics.LEFT_INFO, stamp, info_left, LEFT_FRAME_ID)
    bag.write_camera_info(topics.RIGHT_INFO, stamp, info_right, RIGHT_FRAME_ID)


def _write_labels(bag, stamp, labels, prefix, frame_id):
    """parts and type as mono8, instance as mono16, under `prefix` (left or right ground truth)."""
    for name, encoding in (('parts', 'mono8'), ('type', 'mono8'), ('instance', 'mono16')):
        if labels.get(name) is not None:
            dtype = np.uint16 if encoding == 'mono16' else np.uint8
            bag.write_image(f'{prefix}/{name}', stamp, np.asarray(labels[name]).astype(dtype, copy=False),
                            frame_id, encoding)


# ---------------------------------------------------------------- EndoVis 2017
def calibration_for_frames(calib, image_size):
    """The calibration of frames of `image_size`: the EndoVis file is for the 1280x1024 crop; full
    1920x1080 frames move the principal points by the crop offset."""
    width, height = image_size
    if (width, height) == (calib.width, calib.height):
        return calib
    full = calib.endovis_full_frame()
    if (width, height) == (full.width, full.height):
        return full
    raise DataError(f'{calib.source}: calibrated for {calib.width}x{calib.height} images, '
                    f'but the frames are {width}x{height}')


def write_endovis_bag(dataset_dir, out, *, crop=True, rate=1.0, storage='mcap', calibration=None,
                      max_frames=None, overwrite=False):
    """One EndoVis 2017 `instrument_dataset_N` folder -> a bag; returns the number of frames written."""

    dataset_dir = Path(dataset_dir)
    match = re.fullmatch(r'instrument_dataset_(\d+)', dataset_dir.name)
    if not dataset_dir.is_dir():
        raise DataError(f'{dataset_dir}: folder not found')
    if match is None:
        raise DataError(f'{dataset_dir}: expected an EndoVis 2017 instrument_dataset_N folder')
    _check_rate(rate)
    if max_frames is not None and max_frames < 1:
        raise DataError(f'{dataset_dir}: --max-frames must be at least 1, got {max_frames}')
    data = EndoVis2017(dataset_dir.parent, videos=[int(match.group(1))], crop=crop)
    calib = load_endovis_calibration(calibration or dataset_dir / 'camera_calibration.txt')
    first = data[0]['image']
    calib = calibration_for_frames(calib, (first.shape[1], first.shape[0]))
    rectification = calib.rectify()
    count = len(data) if max_frames is None else min(len(data), max_frames)
    provenance = {'mffseg.source': 'endovis2017', 'mffseg.dataset': dataset_dir.name, 'mffseg.crop': crop,
                  'mffseg.calibration': calib.source, 'mffseg.rate_hz': rate}
    with BagWriter(out, storage=storage, overwrite=overwrite, custom_data=provenance) as bag:
        for i in tqdm(range(count), desc=f'bag {dataset_dir.name}', unit='frame'):
            sample = data[i]
            left, right = sample['image'], data.right_image(i)
            if right.shape != left.shape or left.shape != first.shape:
                raise DataError(f'{data.video_dir(data.frames[i][0])}: frame {data.frames[i][1]} is '
                                f'{left.shape[1]}x{left.shape[0]} (left), {right.shape[1]}x{right.shape[0]} '
                                f'(right); the first left frame is {first.shape[1]}x{first.shape[0]}')
            stamp = _stamp(i, rate)
            _write_stereo(bag, stamp, left, right, calib.camera_info('left', rectification),
                          calib.camera_info('right', rectification))
            _write_labels(bag, stamp, sample, topics.GT_PREFIX, LEFT_FRAME_ID)
    return count


# ---------------------------------------------------------------- synthetic scenes
def write_synth_bag(out, *, frames, size=(256, 320), seed=0, rate=10.0, storage='mcap', overwrite=False,
                    **generator_options):
    """Synthetic stereo scenes -> a bag with left and right ground truth and the true instruments (tips
    by the node's definition, 3-D tips, shaft axes: evaluation/ground_truth.py);
    returns the number of frames written. `generator_options` go to SceneGenerator."""

    _check_rate(rate)
    if frames < 1:
        raise DataError(f'{out}: --frames must be at least 1, got {frames}')
    height, width = size
    rig = StereoRig.endovis_like().resized(width, height)  # EndoVis field of view at this size
    generator = SceneGenerator(rig, seed=seed, **generator_options)
    provenance = {'mffseg.source': 'synth', 'mffseg.seed': seed, 'mffseg.size': f'{height}x{width}',
                  'mffseg.rate_hz': rate, **{f'mffseg.{k}': v for k, v in generator_options.items()}}
    with BagWriter(out, storage=storage, overwrite=overwrite, custom_data=provenance) as bag:
        for i in tqdm(range(frames), desc='bag synth', unit='frame'):
            frame = generator.frame(i)
            stamp = _stamp(i, rate)
            _write_stereo(bag, stamp, frame.left, frame.right, frame.rig.camera_info('left'),
                          frame.rig.camera_info('right'))
            _write_labels(bag, stamp, frame.labels_left, topics.GT_PREFIX, LEFT_FRAME_ID)
            _write_labels(bag, stamp, frame.labels_right, topics.GT_RIGHT_PREFIX, RIGHT_FRAME_ID)
            records = ground_truth_records(frame.labels_left, frame.labels_right, rig.P_left, rig.P_right,
                                           frame.tips)
            bag.write_points(topics.GT_TIPS, stamp, records, LEFT_FRAME_ID)
    return frames


# ---------------------------------------------------------------- command line
def _check_rate(rate):
    if not (rate > 0 and np.isfinite(rate)):
        raise DataError(f'--rate must be a positive number of frames per second, got {rate}')


MAX_SIZE = 4096  # per side; a typo such as 10240x12800 would otherwise run the machine out of memory


def _size(text):
    return parse_size(text, what='--size', minimum=32, maximum=MAX_SIZE, error=argparse.ArgumentTypeError)


def add_arguments(parser):
    sub = parser.add_subparsers(dest='bag_command', metavar='SOURCE', required=True)
    common = {'storage': {'choices': sorted(STORAGES), 'default': 'mcap', 'help': 'rosbag2 storage (default mcap)'},
              'overwrite': {'action': 'store_true', 'help': 'replace an existing bag at OUT'}}

    e = sub.add_parser('endovis', help='an EndoVis 2017 instrument_dataset_N folder -> bag',
                       description='Left/right frames, camera_info (rectified from camera_calibration.txt) '
                                   'and ground-truth parts/type/instance labels of one EndoVis 2017 video.')
    e.add_argument('dataset', type=Path, help='path to instrument_dataset_N')
    e.add_argument('out', type=Path, help='bag folder to create')
    e.add_argument('--no-crop', dest='crop', action='store_false',
                   help='keep the raw 1920x1080 frames (default: crop to the 1280x1024 image area)')
    e.add_argument('--rate', type=float, default=1.0, help='frames per second of the stamps (default 1: '
                                                           'EndoVis frames are 1 Hz samples)')
    e.add_argument('--calibration', type=Path, help='calibration file (default DATASET/camera_calibration.txt)')
    e.add_argument('--max-frames', type=int, help='write only the first N frames')
    e.add_argument('--storage', **common['storage'])
    e.add_argument('--overwrite', **common['overwrite'])

    s = sub.add_parser('synth', help='synthetic stereo scenes -> bag (with ground-truth 3-D tips)',
                       description='Procedural stereo endoscope frames with exact labels and 3-D tips.')
    s.add_argument('out', type=Path, help='bag folder to create')
    s.add_argument('--frames', type=int, required=True, help='number of stereo frames')
    s.add_argument('--size', type=_size, default=(256, 320), help='image size HxW (default 256x320)')
    s.add_argument('--seed', type=int, default=0, help='scene seed (default 0)')
    s.add_argument('--rate', type=float, default=10.0, help='frames per second of the stamps (default 10)')
    s.add_argument('--storage', **common['storage'])
    s.add_argument('--overwrite', **common['overwrite'])


def run(args):
    if args.bag_command == 'endovis':
        n = write_endovis_bag(args.dataset, args.out, crop=args.crop, rate=args.rate, storage=args.storage,
                              calibration=args.calibration, max_frames=args.max_frames,
                              overwrite=args.overwrite)
    else:
        n = write_synth_bag(args.out, frames=args.frames, size=args.size, seed=args.seed, rate=args.rate,
                            storage=args.storage, overwrite=args.overwrite)
    print(f'wrote {n} stereo frames to {args.out} ({args.storage})')
    return 0
