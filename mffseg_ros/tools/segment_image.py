"""`mffseg segment`: segment image files (or, with none given, a generated endoscope frame) and write
overlay PNGs with tips plus the parts/type label images."""
import logging
from pathlib import Path

import numpy as np

from mffseg_ros.data.synth import SynthDataset
from mffseg_ros.errors import DataError, MffsegError
from mffseg_ros.inference.instruments import DEFAULT_MIN_AREA
from mffseg_ros.inference.perception import InstrumentPerception, PerceptionConfig
from mffseg_ros.inference.segmenter import Segmenter
from mffseg_ros.visualize import contact_sheet, instrument_overlay, load_rgb, overlay, save_png, type_name

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')


def add_arguments(parser):
    parser.add_argument('images', nargs='*', type=Path, metavar='IMAGE',
                        help='image files or folders of images (none: segment a generated frame)')
    parser.add_argument('--weights', default=None,
                        help='safetensors weights (default: the shipped models/ weights, or $MFFSEG_WEIGHTS)')
    parser.add_argument('--out', type=Path, default=Path('mffseg_out'), help='output folder (default mffseg_out)')
    parser.add_argument('--device', default='auto', help='auto, cpu or cuda[:N] (default auto)')
    parser.add_argument('--input-scale', type=float, default=None,
                        help="network input scale relative to the frame (default: the weights' own)")
    parser.add_argument('--min-area', type=int, default=None,
                        help='smallest instrument instance in pixels that gets a tip')
    parser.add_argument('--min-score', type=float, default=None,
                        help='mean P(instrument) a region needs to be an instrument (default '
                             f'{PerceptionConfig.min_instrument_score}; the node parameter min_instrument_score)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the generated frame')


def expand_images(paths):
    """Files as given; folders -> their image files, sorted. Missing paths raise DataError."""
    files = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f'{p}: folder holds no images ({", ".join(IMAGE_SUFFIXES)})')
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f'{p}: no such image file or folder')
    return files


def generated_sample(seed=0, height=512, width=640):
    """A frame (with labels) from the synthetic stereo scene generator: the first of the seed's scenes
    that shows an instrument's claspers (some scenes show no instrument at all)."""
    scenes = SynthDataset(32, size=(height, width), seed=seed)
    return next((s for s in scenes if (s['parts'] == 3).any()), scenes[0])


def _instruments(result, args):
    """One image's instruments (a fresh perception per image: separate images share no tracks)."""
    options = {'min_instance_area': DEFAULT_MIN_AREA if args.min_area is None else args.min_area}
    if args.min_score is not None:
        options['min_instrument_score'] = args.min_score
    return InstrumentPerception(PerceptionConfig(**options)).process(result)


def write_result(out_dir, stem, rgb, result, frame, ground_truth=None):
    """<stem>_overlay.png (prediction | ground truth when given), <stem>_parts.png, <stem>_type.png
    (uint8 label images, ids as in model.classes), <stem>_instances.png (uint16 instrument ids).
    Returns the written paths."""
    picture = instrument_overlay(rgb, frame)
    if ground_truth is not None:
        gt_type = np.where(ground_truth['type'] == 255, 0, ground_truth['type']).astype(np.uint8)
        gt_parts = np.where(ground_truth['parts'] == 255, 0, ground_truth['parts']).astype(np.uint8)
        picture = contact_sheet([picture, overlay(rgb, gt_type, gt_parts)], cols=2,
                                labels=['prediction', 'ground truth'])
    paths = [save_png(out_dir / f'{stem}_overlay.png', picture)]
    paths.append(save_png(out_dir / f'{stem}_parts.png', frame.parts_image()))
    paths.append(save_png(out_dir / f'{stem}_type.png', frame.labels_image()))
    paths.append(save_png(out_dir / f'{stem}_instances.png', frame.instance_ids_image()))
    return paths


def _describe(frame):
    return ', '.join(f'#{i.track_id} {type_name(i.type_id)} ({i.type_score:.2f}) tip at ({i.tip[0]:.0f}, '
                     f'{i.tip[1]:.0f})' for i in frame.instruments) or 'no instrument found'


def run(args):
    from tqdm import tqdm

    if args.min_area is not None and args.min_area < 1:
        raise MffsegError(f'--min-area must be at least 1 pixel, got {args.min_area}')
    if args.min_score is not None and not 0.0 <= args.min_score <= 1.0:
        raise MffsegError(f'--min-score must be between 0 and 1, got {args.min_score}')
    files = expand_images(args.images)
    segmenter = Segmenter.load(args.weights, device=args.device, input_scale=args.input_scale)
    log.info('%s', segmenter.describe())
    if not files:
        sample = generated_sample(args.seed)
        result = segmenter.segment(sample['image'])
        frame = _instruments(result, args)
        paths = write_result(args.out, sample['name'], sample['image'], result, frame, ground_truth=sample)
        print(f'generated frame {sample["image"].shape[1]}x{sample["image"].shape[0]}: {_describe(frame)}')
        print('wrote ' + ', '.join(map(str, paths)))
        return 0
    stems = {}
    for path in tqdm(files, desc='segment', unit='image', disable=len(files) < 2):
        rgb = load_rgb(path)
        result = segmenter.segment(rgb)
        frame = _instruments(result, args)
        stem = path.stem if path.stem not in stems else f'{path.parent.name}_{path.stem}'
        stems[stem] = path
        paths = write_result(args.out, stem, rgb, result, frame)
        tqdm.write(f'{path}: {_describe(frame)} -> {paths[0]}')
    return 0
