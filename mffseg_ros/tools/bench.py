"""`mffseg bench`: model-only latency of MFF (main, aux, multi-task) per size, precision and backend,
the paper's peers in the same run, and optionally end to end through ROS 2. Writes bench.md,
bench.json and bench.png to --out."""
import copy
import logging
from pathlib import Path

import torch
from tqdm import tqdm

from mffseg_ros.errors import MffsegError
from mffseg_ros.tools import bench_model as bm
from mffseg_ros.tools.export import parse_size

log = logging.getLogger(__name__)
BACKENDS = ('torch', 'onnx', 'cudagraph', 'compile')


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
    parser.add_argument('--modes', default='main,aux,multitask',
                        help='MFF modes: main, aux (aux-only branch), multitask (main + aux outputs)')
    parser.add_argument('--precisions', default=None,
                        help='fp32,fp16,bf16 (default: fp32,fp16 on CUDA, fp32 on the CPU)')
    parser.add_argument('--backends', default=None,
                        help=f'{",".join(BACKENDS)} (default: torch,cudagraph on CUDA, torch,onnx on the CPU)')
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
    ros.add_argument('--node-param', action='append', default=[], metavar='NAME:=VALUE',
                     help='extra segment node parameter (repeatable), e.g. branch:=aux')
    parser.add_argument('--out', default='bench_results', help='output folder (default bench_results)')


def resolve_options(args):
    from mffseg_ros.inference.segmenter import resolve_device
    device = resolve_device(args.device)
    cuda = device.type == 'cuda'
    opts = {
        'device': device,
        'sizes': [parse_size(s) for s in _list(args.sizes, what='size')],
        'modes': _list(args.modes, bm.MODES, 'mode'),
        'precisions': _list(args.precisions or ('fp32,fp16' if cuda else 'fp32'), tuple(bm.DTYPES), 'precision'),
        'backends': _list(args.backends or ('torch,cudagraph' if cuda else 'torch,onnx'), BACKENDS, 'backend'),
    }
    if args.compile and 'compile' not in opts['backends']:
        opts['backends'].append('compile')
    if args.iters < 1 or args.warmup < 0:
        raise MffsegError(f'--iters must be >= 1 and --warmup >= 0 (got {args.iters}, {args.warmup})')
    if args.threads is not None and args.threads < 1:
        raise MffsegError(f'--threads must be >= 1, got {args.threads}')
    if args.no_model and not args.ros:
        raise MffsegError('nothing to benchmark: --no-model without --ros')
    out = Path(args.out)
    if out.exists() and not out.is_dir():  # fail now, not after minutes of timing
        raise MffsegError(f'{out}: exists and is not a folder (--out is the output folder)')
    return opts


def load_mff(weights):
    from mffseg_ros.model.mffnet import MFFNet
    if weights:
        from mffseg_ros.model.weights import load_weights
        return load_weights(weights)[0].eval()
    torch.manual_seed(0)
    return MFFNet().eval()


def make_runner(model, call, *, mode, backend, device, precision, threads):
    """`x -> outputs` for one row; raises bm.Unavailable with the reason when it cannot run here."""
    if backend == 'onnx':
        from mffseg_ros.inference.backends import BackendUnavailable, make_backend
        if mode == 'multitask':
            raise bm.Unavailable('an ONNX export has one output branch')
        if precision != 'fp32':
            raise bm.Unavailable('ONNX Runtime backend runs fp32 only')
        try:
            return make_backend('onnx', model, {}, device=device, branch=mode, threads=threads)
        except BackendUnavailable as e:
            raise bm.Unavailable(str(e)) from None
    eager = bm.torch_runner(model, call, device=device, precision=precision,
                            channels_last=device.type == 'cuda')
    if backend == 'torch':
        return eager
    if backend == 'cudagraph':
        if device.type != 'cuda':
            raise bm.Unavailable('CUDA graphs need a CUDA device')
        return 'graph', eager  # captured once the example input exists
    return bm.compiled_runner(eager, device)


def prepare_row(row, model, call, args, opts):
    """(runner, example input) for `row`, or None with the row's status set to 'unavailable'/'error'."""
    device, (h, w) = opts['device'], row['size_hw']
    x = torch.randn(1, 3, h, w, device=device)
    try:
        runner = make_runner(model, call, mode=row['mode'], backend=row['backend'], device=device,
                             precision=row['precision'], threads=args.threads)
        if isinstance(runner, tuple):
            runner = bm.graph_runner(runner[1], x)
        runner(x)  # the first call exports / compiles / fails here, for this row alone
        return runner, x
    except bm.Unavailable as e:
        row.update(status='unavailable', reason=str(e))
    except (RuntimeError, MffsegError, OSError) as e:  # out of memory, an op a backend lacks, no compiler
        _failed(row, e, device)
    return None


def _failed(row, error, device):
    row.update(status='error', reason=f'{type(error).__name__}: {str(error).splitlines()[0][:200]}')
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def measure_rows(rows, prepared, args, opts):
    """GPU: each row alone (CUDA events). CPU: all rows round-robin (bm.time_interleaved)."""
    device = opts['device']
    if device.type == 'cuda':
        for row, (runner, x) in zip(rows, prepared):
            try:
                row.update(bm.time_callable(runner, x, device=device, warmup=args.warmup, iters=args.iters),
                           status='ok')
            except RuntimeError as e:
                _failed(row, e, device)
        return
    stats = bm.time_interleaved(prepared, warmup=args.warmup, iters=args.iters)
    for row, st in zip(rows, stats):
        row.update(st, status='ok', timing='interleaved')


def model_rows(args, opts):
    from mffseg_ros.tools.bench_peers import build_peers, peer_call
    base = load_mff(args.weights)
    plan = []
    for h, w in opts['sizes']:
        for precision in opts['precisions']:
            for mode in opts['modes']:
                for backend in opts['backends']:
                    plan.append(('MFF', base, bm.mff_call(mode), mode, (h, w), precision, backend, ''))
    if args.peers:
        num_classes = base.tasks.get('type', base.num_outputs)
        peer_backends = [b for b in opts['backends'] if b in ('torch', 'cudagraph')]
        for name, peer, reason in build_peers(num_classes):
            for h, w in opts['sizes']:
                for precision in opts['precisions']:
                    for backend in peer_backends:
                        plan.append((name, peer, peer_call, '-', (h, w), precision, backend, reason))
    rows, runnable, prepared, macs = [], [], [], {}
    for name, model, call, mode, (h, w), precision, backend, reason in tqdm(plan, desc='preparing', unit='row'):
        row = {'model': name, 'mode': mode, 'size': f'{h}x{w}', 'size_hw': (h, w), 'precision': precision,
               'backend': backend}
        rows.append(row)
        if reason:
            row.update(status='unavailable', reason=reason)
            continue
        ready = prepare_row(row, copy.deepcopy(model), call, args, opts)
        if ready is None:
            continue
        key = (name, mode, h, w)
        if key not in macs:
            macs[key] = bm.count_macs(copy.deepcopy(model).float().eval(), torch.zeros(1, 3, h, w), call) / 1e9
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
        if row.get('status') == 'ok':
            row['tflops'] = 2 * row['gmacs'] / row['median_ms']  # GFLOP per ms = TFLOP/s
    add_ratios(rows)
    for row in rows:
        del row['size_hw']
    return rows


def add_ratios(rows):
    """ratio_to_mff: median / median of MFF main, eager torch, same size and precision (this run)."""
    reference = {(r['size'], r['precision']): r['median_ms'] for r in rows
                 if r['model'] == 'MFF' and r['mode'] == 'main' and r['backend'] == 'torch'
                 and r.get('status') == 'ok'}
    for r in rows:
        ref = reference.get((r['size'], r['precision']))
        if r.get('status') == 'ok' and ref:
            r['ratio_to_mff'] = r['median_ms'] / ref


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
    from mffseg_ros.tools.bench_report import markdown, run_metadata, write_all
    result = {'meta': run_metadata('mffseg bench ' + ' '.join(_argv_of(args))),
              'options': {'device': str(opts['device']), 'sizes': [f'{h}x{w}' for h, w in opts['sizes']],
                          'modes': opts['modes'], 'precisions': opts['precisions'],
                          'backends': opts['backends'], 'iters': args.iters, 'warmup': args.warmup,
                          'threads': args.threads}}
    if not args.no_model:
        result['model'] = model_rows(args, opts)
    if args.ros:
        from mffseg_ros.tools.bench_ros import ros_rows
        result['ros'] = ros_rows(args, opts)
    paths = write_all(result, args.out)
    print(markdown(result))
    print('wrote ' + ', '.join(str(p) for p in paths.values()))
    return 0


def _argv_of(args):
    """The options as given, for the report (argparse keeps no copy of argv)."""
    skip = {'command', 'verbose'}
    if not args.ros:
        skip |= {'rate', 'stereo', 'frame_size', 'duration', 'node', 'node_param', 'reliable'}
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
