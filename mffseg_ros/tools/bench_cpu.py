"""CPU backends compared END TO END on synthetic stereo frames: `python -m mffseg_ros.tools.bench_cpu`.

For each backend (torch, ONNX Runtime fp32, ONNX Runtime int8: `precision='int8'`, static quantisation
calibrated on synthetic frames) the node's Segmenter runs `segment_batch([left, right])` (resize,
normalise, network, post-processing; the node now takes ONNX Runtime's pairs eye by eye,
`Segmenter.segment_pair`, 13 ms sooner after the network here, and torch's in one batch, so ONNX
Runtime's lead only widens) and, separately, the bare network on the same pre-processed batch and the
post-processing alone. All configurations are timed round-robin in one run, so the ratios hold on a
shared machine. Label agreement of ONNX int8 and torch against ONNX fp32 is measured on other synthetic
pairs than the calibration ones. This is the measurement behind `backend: auto` on the CPU and the int8 decision
(docs/BENCHMARKS.md)."""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mffseg_ros.data.synth import SynthDataset, calibration_options
from mffseg_ros.inference.segmenter import Segmenter
from mffseg_ros.sizes import parse_size
from mffseg_ros.tools import bench_model as bm
from mffseg_ros.tools.bench_report import run_metadata


def synthetic_pairs(count, size, seed):
    eyes = {eye: SynthDataset(count, size=size, seed=seed, eye=eye) for eye in ('left', 'right')}
    return [[eyes[eye][i]['image'] for eye in ('left', 'right')] for i in range(count)]


def agreement(a, b):
    """Fraction of equal pixels per task between two SegmentationResults."""
    return {task: float((getattr(a, task) == getattr(b, task)).mean()) for task in ('type', 'parts', 'binary')}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--weights', default=None, help='safetensors weights (default: the shipped model)')
    parser.add_argument('--frame-size', default='1024x1280', help='stereo frame HxW (default 1024x1280)')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--agreement', type=int, default=8, help='held-out synthetic pairs for label agreement')
    parser.add_argument('--out', default='bench_results/cpu_backends.json')
    args = parser.parse_args(argv)
    size = parse_size(args.frame_size, what='--frame-size', minimum=32)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    segs = {'torch': Segmenter.load(args.weights, device='cpu', backend='torch', threads=args.threads),
            'onnx': Segmenter.load(args.weights, device='cpu', backend='onnx', threads=args.threads)}
    held_out = synthetic_pairs(args.agreement, size, seed=202)
    fp32 = segs['onnx']
    segs['onnx-int8'] = Segmenter.load(args.weights, device='cpu', backend='onnx', precision='int8',
                                       threads=args.threads, **calibration_options('int8'))  # as the node
    shape = (2, *fp32.network_size(*size))
    fp32_file = fp32._backend.model_file(*shape)
    t0 = time.perf_counter()
    int8_file = segs['onnx-int8']._backend.int8_file(*shape)  # export + quantisation, as the node's start-up
    quantize_s = time.perf_counter() - t0

    agree = {name: [] for name in segs if name != 'onnx'}
    for pair in tqdm(held_out, desc='agreement', unit='pair'):
        reference = fp32.segment_batch(pair)
        for name, scores in agree.items():
            scores += [agreement(r, ref) for r, ref in zip(segs[name].segment_batch(pair), reference)]
    pair = held_out[0]
    calls = []
    for seg in segs.values():
        logits = seg.forward(seg.preprocess(pair))
        calls += [(seg.segment_batch, pair), (seg.forward, seg.preprocess(pair)),
                  (lambda lg, seg=seg: seg.postprocess(lg, size), logits)]
    stats = bm.time_interleaved(calls, warmup=2, iters=args.iters)
    rows = []
    for k, name in enumerate(segs):
        frame, network, post = stats[3 * k:3 * k + 3]
        row = {'backend': name, 'end_to_end_ms': frame['median_ms'], 'end_to_end_p99_ms': frame['p99_ms'],
               'network_ms': network['median_ms'], 'postprocess_ms': post['median_ms'],
               'end_to_end_over_network': frame['median_ms'] / network['median_ms']}
        if name in agree:
            row.update({f'{task}_agreement_vs_onnx_fp32': float(np.mean([a[task] for a in agree[name]]))
                        for task in ('type', 'parts', 'binary')})
        rows.append(row)
    base = {r['backend']: r['end_to_end_ms'] for r in rows}
    for row in rows:
        row['speed_up_vs_torch'] = base['torch'] / row['end_to_end_ms']
        row['speed_up_vs_onnx_fp32'] = base['onnx'] / row['end_to_end_ms']
    post_torch = rows[0]['postprocess_ms']
    for row in rows:
        row['postprocess_over_torch'] = row['postprocess_ms'] / post_torch
    given = sys.argv[1:] if argv is None else argv
    result = {'meta': run_metadata(' '.join(['python -m mffseg_ros.tools.bench_cpu', *given])),
              'frame_size': list(size), 'network_size': list(fp32.network_size(*size)), 'threads': args.threads,
              'iters': args.iters, 'quantize_s': quantize_s, 'int8_file_mb': int8_file.stat().st_size / 2**20,
              'fp32_file_mb': fp32_file.stat().st_size / 2**20, 'rows': rows}
    out.write_text(json.dumps(result, indent=2) + '\n')
    for row in rows:
        print(json.dumps(row))
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
