"""`mffseg bench`: latency of MFF (main and aux-only branch) per size, precision and backend, the
paper's peers in the same run, and optionally end to end through ROS 2. Writes bench.md, bench.json
and bench.png to --out.

Every row is a `Segmenter` built with that backend and precision, and times exactly what the node
runs: `network ms` is `Segmenter.forward` (the backend alone, input already on the device) and
`frame ms` is `Segmenter.segment_batch` on a uint8 frame of the network's size (pre-processing,
network, post-processing; on CUDA the fast path)."""
import copy
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mffseg_ros.data.synth import calibration_options
from mffseg_ros.errors import MffsegError
from mffseg_ros.inference.backends import BACKENDS, PRECISIONS, BackendUnavailable
from mffseg_ros.inference.segmenter import Segmenter, resolve_device
from mffseg_ros.model.mffnet import BRANCHES, MFFNet
from mffseg_ros.model.weights import default_metadata, load_weights
from mffseg_ros.tools import bench_model as bm
from mffseg_ros.tools.bench_peers import build_peers
from mffseg_ros.tools.bench_report import markdown, run_metadata, write_all
from mffseg_ros.tools.export import parse_size

log = logging.getLogger(__name__)
# Row variants: each registry backend, plus 'cudagraph' = the torch backend's CUDA fast path captured
# in CUDA graphs ('torch' rows run the fast path without graphs on CUDA, the eager pipeline on the CPU).
VARIANTS = {name: (name, {}) for name in BACKENDS}
VARIANTS['torch'] = ('torch', {'cuda_graphs': False})
VARIANTS['cudagraph'] = ('torch', {'cuda_graphs': True})
MODES = BRANCHES  # the node runs one branch: main, or the faster aux-only branch


class Unavailable(Exception):
    """A configuration that cannot run here; the row is reported with this reason."""


def _list(text, allowed=None, what='value'):
    items = [t.strip() for t in str(text).split(',') if t.strip()]
    if not items:
        raise MffsegError(f'empty {what} list {text!r}')
    bad = [t for t in items if allowed is not None and t not in allowed]
    if bad:
        raise MffsegError(f'unknown {what} {", ".join(bad)}: choose from {", ".join(allowed)}')
    return items


def add_arguments(parser):
    parser.add_argument('--weights', help='safetensors weights (default: a randomly initialised MFF; '
                                          'speed does not depend on the weights)')
    parser.add_argument('--device', default='auto', help='auto | cpu | cuda[:N]')
    parser.add_argument('--sizes', default='1024x1280,512x640', help='network input sizes HxW, comma-separated')
    parser.add_argument('--modes', default=','.join(MODES),
                        help='MFF branches: main, aux (aux-only branch: main decoder skipped)')
    parser.add_argument('--precisions', default=None,
                        help='fp32,fp16,bf16 (default: fp32,fp16 on CUDA, fp32 on the CPU)')
    parser.add_argument('--backends', default=None,
                        help=f'{",".join(VARIANTS)} (default: torch,cudagraph on CUDA, torch,onnx on the CPU)')
    parser.add_argument('--compile', action='store_true', help='add torch.compile rows')
    parser.add_argument('--peers', action='store_true',
                        help='also time LinkNet-34, TernausNet-11, PSPNet (segmentation_models_pytorch) '
                             'and a plain U-Net')
    parser.add_argument('--iters', type=int, default=50, help='timed iterations per row (default 50)')
    parser.add_argument('--warmup', type=int, default=5, help='untimed iterations first (default 5)')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads for torch and ONNX Runtime')
    parser.add_argument('--no-model', action='store_true', help='skip the model-only part')
    ros = parser.add_argument_group('end to end through ROS 2')
    ros.add_argument('--ros', action='store_true', help='publish frames over DDS into the segment node')
    ros.add_argument('--rate', default='30', help='publish rate(s) in Hz, comma-separated (default 30)')
    ros.add_argument('--stereo', action='store_true', help='publish stereo pairs with camera_info')
    ros.add_argument('--frame-size', default='1024x1280', help='published frame HxW (default 1024x1280)')
    ros.add_argument('--duration', type=float, default=10.0, help='measured seconds (default 10)')
    ros.add_argument('--node', choices=('subprocess', 'inprocess'), default='subprocess',
                     help='run the node as its own process (default) or in this one')
    ros.add_argument('--reliable', action='store_true',
                     help='reliable image QoS on both ends (default: best effort, like a camera driver)')
    ros.add_argument('--lockstep', type=int, default=0, metavar='N',
                     help='instead of a rate: N stereo pairs one at a time, every output subscribed, each '
                          'followed by the bare network on the same pair (node / network ratio)')
    ros.add_argument('--fastdds-profile', action='store_true',
                     help="the shipped Fast DDS profile for large images (config/fastdds_large_images.xml) "
                          "for the publisher here and the node, as docs/ROS_INTERFACE.md advises labs")
    ros.add_argument('--node-param', action='append', default=[], metavar='NAME:=VALUE',
                     help='extra segment node parameter (repeatable), e.g. branch:=aux')
    parser.add_argument('--out', default='bench_results', help='output folder (default bench_results)')


def resolve_options(args):
    device = resolve_device(args.device)
    cuda = device.type == 'cuda'
    opts = {
        'device': device,
        'sizes': [parse_size(s) for s in _list(args.sizes, what='size')],
        'modes': _list(args.modes, MODES, 'mode'),
        'precisions': _list(args.precisions or ('fp32,fp16' if cuda else 'fp32'), tuple(PRECISIONS), 'precision'),
        'backends': _list(args.backends or ('torch,cudagraph' if cuda else 'torch,onnx'), VARIANTS, 'backend'),
    }
    if args.compile and 'compile' not in opts['backends']:
        opts['backends'].append('compile')
    if args.iters < 1 or args.warmup < 0:
        raise MffsegError(f'--iters must be >= 1 and --warmup >= 0 (got {args.iters}, {args.warmup})')
    if args.threads is not None and args.threads < 1:
        raise MffsegError(f'--threads must be >= 1, got {args.threads}')
    if args.lockstep and not args.ros:
        raise MffsegError('--lockstep is a way of running the ROS part: add --ros')
    if args.no_model and not args.ros:
        raise MffsegError('nothing to benchmark: --no-model without --ros')
    out = Path(args.out)
    if out.exists() and not out.is_dir():  # fail now, not after minutes of timing
        raise MffsegError(f'{out}: exists and is not a folder (--out is the output folder)')
    return opts


def load_mff(weights):
    """(model, metadata): the weights given, else a randomly initialised MFF (speed does not depend on
    the weight values)."""
    if weights:
        return load_weights(weights)
    torch.manual_seed(0)
    model = MFFNet().eval()
    return model, default_metadata(model)


def make_segmenter(model, metadata, *, mode, variant, device, precision, size, threads):
    """The Segmenter the node would build for this row; Unavailable with the reason if it cannot run."""
    backend, options = VARIANTS[variant]
    reason = BACKENDS[backend].missing(device, precision)
    if variant == 'cudagraph' and device.type != 'cuda':
        reason = 'CUDA graphs need a CUDA device'
    if reason:
        raise Unavailable(reason)
    options = {**options, **calibration_options(precision, size)}  # int8: calibrated as the node does
    try:
        return Segmenter(model, metadata, device=device, precision=precision, branch=mode, input_size=size,
                         backend=backend, threads=threads, **options)
    except BackendUnavailable as e:
        raise Unavailable(str(e)) from None


class _Row:
    """A row's Segmenter and inputs: a uint8 frame at the network size and its pre-processed tensor."""

    def __init__(self, seg, size):
        self.seg = seg
        self.frame = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
        self.x = seg.preprocess([self.frame])
        self.graphed = seg._fast_path is not None and seg._fast_path.cuda_graphs

    def network(self, x):
        return self.seg.forward(x)

    def frame_pipeline(self, frame):
        return self.seg.segment_batch([frame])


def prepare_row(row, model, metadata, args, opts):
    """A _Row for `row`, or None with the row's status set to 'unavailable'/'error'."""
    device, size = opts['device'], row['size_hw']
    try:
        seg = make_segmenter(model, metadata, mode=row['mode'] if row['mode'] != '-' else 'main',
                             variant=row['backend'], device=device, precision=row['precision'], size=size,
                             threads=args.threads)
        seg.warm_up(size)  # exports / compiles / captures / fails here, for this row alone
        return _Row(seg, size)
    except Unavailable as e:
        row.update(status='unavailable', reason=str(e))
    except (RuntimeError, MffsegError, OSError) as e:  # out of memory, an op a backend lacks, no compiler
        _failed(row, e, device)
    return None


def _failed(row, error, device):
    row.update(status='error', reason=f'{type(error).__name__}: {str(error).splitlines()[0][:200]}')
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def _calls(ready):
    """(fn, input) pairs to time per row: the network (not for graphed rows: their graph spans the
    whole frame) and the whole frame."""
    return ([] if ready.graphed else [(ready.network, ready.x)]) + [(ready.frame_pipeline, ready.frame)]


def _store(row, ready, stats):
    frame = stats.pop()
    row.update(frame_median_ms=frame['median_ms'], frame_p99_ms=frame['p99_ms'], status='ok')
    if stats:
        row.update(stats[0])
    row['fps'] = 1e3 / frame['median_ms'] if frame['median_ms'] > 0 else float('inf')


def measure_rows(rows, prepared, args, opts):
    """GPU: each row alone (CUDA events around the network; the frame call returns host arrays, so a
    host clock is honest). CPU: all rows round-robin (bm.time_interleaved)."""
    device = opts['device']
    if device.type == 'cuda':
        for row, ready in zip(rows, prepared):
            try:
                stats = [bm.time_callable(fn, x, device=device if fn == ready.network else 'cpu',
                                          warmup=args.warmup, iters=args.iters) for fn, x in _calls(ready)]
                _store(row, ready, stats)
            except RuntimeError as e:
                _failed(row, e, device)
        return
    calls = [_calls(ready) for ready in prepared]
    stats = bm.time_interleaved([c for row_calls in calls for c in row_calls], warmup=args.warmup,
                                iters=args.iters)
    for row, ready, row_calls in zip(rows, prepared, calls):
        _store(row, ready, stats[:len(row_calls)])
        stats = stats[len(row_calls):]
        row['timing'] = 'interleaved'


def model_rows(args, opts):
    base, metadata = load_mff(args.weights)
    plan = []
    for h, w in opts['sizes']:
        for precision in opts['precisions']:
            for mode in opts['modes']:
                for backend in opts['backends']:
                    plan.append(('MFF', base, metadata, mode, (h, w), precision, backend, ''))
    if args.peers:
        num_classes = base.tasks.get('type', base.num_outputs)
        for name, peer, reason in build_peers(num_classes):
            peer_meta = default_metadata(peer) if peer is not None else {}
            for h, w in opts['sizes']:
                for precision in opts['precisions']:
                    for backend in opts['backends']:
                        plan.append((name, peer, peer_meta, '-', (h, w), precision, backend, reason))
    rows, runnable, prepared, macs = [], [], [], {}
    for name, model, meta, mode, (h, w), precision, backend, reason in tqdm(plan, desc='preparing', unit='row'):
        row = {'model': name, 'mode': mode, 'size': f'{h}x{w}', 'size_hw': (h, w), 'precision': precision,
               'backend': backend}
        rows.append(row)
        if reason:
            row.update(status='unavailable', reason=reason)
            continue
        ready = prepare_row(row, copy.deepcopy(model), meta, args, opts)
        if ready is None:
            continue
        key = (name, mode, h, w)
        if key not in macs:
            branch = mode if mode != '-' else 'main'
            macs[key] = bm.count_macs(copy.deepcopy(model).float().eval(), torch.zeros(1, 3, h, w),
                                      lambda m, x, branch=branch: m(x, branch=branch)) / 1e9
        row['gmacs'] = macs[key]
        runnable.append(row)
        if opts['device'].type == 'cuda':  # one row at a time: its peak memory is its own
            measure_rows([row], [ready], args, opts)
            del ready
            torch.cuda.empty_cache()
        else:
            prepared.append(ready)
    if prepared:
        log.info('timing %d rows round-robin: %d warm-up + %d timed iterations each',
                 len(prepared), args.warmup, args.iters)
        measure_rows(runnable, prepared, args, opts)
    for row in runnable:
        if row.get('status') == 'ok' and row.get('median_ms'):
            row['tflops'] = 2 * row['gmacs'] / row['median_ms']  # GFLOP per ms = TFLOP/s
    add_ratios(rows)
    for row in rows:
        del row['size_hw']
    return rows


def add_ratios(rows):
    """ratio_to_mff: frame median / frame median of MFF main, torch backend, same size and precision
    (this run): what a frame costs relative to the node's default configuration."""
    reference = {(r['size'], r['precision']): r['frame_median_ms'] for r in rows
                 if r['model'] == 'MFF' and r['mode'] == 'main' and r['backend'] == 'torch'
                 and r.get('status') == 'ok'}
    for r in rows:
        ref = reference.get((r['size'], r['precision']))
        if r.get('status') == 'ok' and ref:
            r['ratio_to_mff'] = r['frame_median_ms'] / ref


def run(args):
    opts = resolve_options(args)
    if opts['device'].type == 'cuda':
        torch.backends.cudnn.benchmark = True  # fixed shapes per row; tuned during warm-up
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, opts)
    finally:
        torch.set_num_threads(threads_before)  # callers (tests, scripts) keep their own setting


def _run(args, opts):
    result = {'meta': run_metadata('mffseg bench ' + ' '.join(_argv_of(args))),
              'options': {'device': str(opts['device']), 'sizes': [f'{h}x{w}' for h, w in opts['sizes']],
                          'modes': opts['modes'], 'precisions': opts['precisions'],
                          'backends': opts['backends'], 'iters': args.iters, 'warmup': args.warmup,
                          'threads': args.threads}}
    if not args.no_model:
        result['model'] = model_rows(args, opts)
    if args.lockstep:
        from mffseg_ros.tools.bench_lockstep import lockstep_rows  # needs rclpy, as below
        result['lockstep'] = lockstep_rows(args, opts)
    elif args.ros:
        from mffseg_ros.tools.bench_ros import ros_rows  # needs rclpy: only for --ros (GPU images may lack it)
        result['ros'] = ros_rows(args, opts)
    paths = write_all(result, args.out)
    print(markdown(result))
    print('wrote ' + ', '.join(str(p) for p in paths.values()))
    return 0


def _argv_of(args):
    """The options as given, for the report (argparse keeps no copy of argv)."""
    skip = {'command', 'verbose'}
    if args.lockstep:
        skip |= {'rate', 'duration'}
    if not args.ros:
        skip |= {'lockstep', 'fastdds_profile', 'stereo', 'frame_size', 'duration', 'node', 'node_param', 'reliable'}
    if args.no_model:
        skip |= {'sizes', 'modes', 'precisions', 'backends', 'compile', 'peers', 'iters', 'warmup'}
    out = []
    for key, value in vars(args).items():
        if key in skip or value in (None, False, []):
            continue
        flag = '--' + key.replace('_', '-')
        if value is True:
            out.append(flag)
        elif isinstance(value, list):
            out += [f'{flag} {v}' for v in value]
        else:
            out.append(f'{flag} {value}')
    return out
