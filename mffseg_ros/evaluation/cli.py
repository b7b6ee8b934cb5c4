"""`mffseg evaluate`: score weights on a data set; writes metrics.json, metrics.md and worst-frame PNGs."""
import logging
from pathlib import Path

from mffseg_ros.data.datasets import build_datasets
from mffseg_ros.errors import MffsegError
from mffseg_ros.evaluation import bag_eval
from mffseg_ros.evaluation.evaluate import evaluate, format_report
from mffseg_ros.inference.perception import PerceptionConfig
from mffseg_ros.inference.segmenter import Segmenter
from mffseg_ros.sizes import parse_size

log = logging.getLogger(__name__)


def add_arguments(parser):
    parser.add_argument('--weights', default=None,
                        help='safetensors weights file (from mffseg train; default: the shipped model)')
    parser.add_argument('--data', action='append', metavar='SPEC',
                        help='data set spec, e.g. endovis:/data/endovis17?videos=7,8, '
                             'synth:?frames=16 or folder:/imgs?masks=/masks&mapping=map.yaml '
                             '(repeat to concatenate sets)')
    parser.add_argument('--bag', type=Path, metavar='BAG',
                        help='instead of --data: a stereo bag with ground truth (mffseg bag synth); scores what '
                             'the node publishes (instruments, tips, tracks, 3-D, axes) and writes bag_scores.json')
    parser.add_argument('--limit', type=int, default=None, help='with --bag: score only the first N frames')
    parser.add_argument('--max-instruments', type=int, default=0, metavar='N',
                        help='instruments published per frame at most, as the node parameter max_instruments '
                             '(default 0: no limit)')
    parser.add_argument('--task', default='all', choices=('parts', 'type', 'binary', 'all'),
                        help='task to score (default: every task the model answers)')
    parser.add_argument('--out', required=True, type=Path, help='output folder')
    parser.add_argument('--worst', type=int, default=8, metavar='K',
                        help='write overlay PNGs of the K worst frames (default 8; 0 = none)')
    parser.add_argument('--device', default='auto', help='auto, cpu or cuda[:N] (default auto)')
    parser.add_argument('--input-scale', type=float, default=None,
                        help="network input scale relative to the frame (default: the weights' own)")
    parser.add_argument('--input-size', default=None, metavar='HxW',
                        help="network input size, e.g. 384x480 (default: the weights' training frame size)")


def run(args):

    if (args.data is None) == (args.bag is None):
        raise MffsegError('give --data SPEC (segmentation metrics) or --bag BAG (instrument-level scores)')
    if args.worst < 0:
        raise MffsegError(f'--worst must be >= 0, got {args.worst}')
    if args.max_instruments < 0:
        raise MffsegError(f'--max-instruments must be >= 0 (0: no limit), got {args.max_instruments}')
    if args.out.exists() and not args.out.is_dir():  # fail now, not after scoring every frame
        raise MffsegError(f'{args.out}: exists and is not a folder (--out is the output folder)')
    input_size = parse_size(args.input_size, what='--input-size', multiple=32) if args.input_size else None
    segmenter = Segmenter.load(args.weights, device=args.device, input_scale=args.input_scale,
                               input_size=input_size)
    if args.bag is not None:
        return bag_eval.run(args, segmenter)
    samples = build_datasets(args.data)
    log.info('%s; %d frames', segmenter.describe(), len(samples))
    meta = segmenter.metadata
    info = {'weights': str(args.weights), 'data': ' + '.join(args.data), 'model': segmenter.describe(),
            'max_instruments': args.max_instruments,
            'weights_git_revision': meta.provenance.git_revision, 'train_recipe': meta.recipe}
    report = evaluate(segmenter, samples, tasks=args.task, worst=args.worst, out_dir=args.out, info=info,
                      config=PerceptionConfig(max_instruments=args.max_instruments))
    print(format_report(report))
    print(f'\nwrote {args.out / "metrics.json"}, {args.out / "metrics.md"}'
          + (f' and {len(report["worst"])} worst-frame PNGs in {args.out / "worst"}' if report['worst'] else ''))
    return 0
