"""What the work around the network costs, and what post-processing at the network's resolution changes.

1. Accuracy: label maps made the old way (every logit channel upsampled bilinearly to the input size,
   then argmax) against the new way (argmax and instances on the network grid; P(instrument) upsampled
   bilinearly, labels from the nearest network pixel inside it): per-task label agreement, and Dice of
   both against the synthetic ground truth.
2. CPU and wall time, per stereo frame, side by side in one run (one torch thread): the network alone
   (one batch of the pair: the ratios' denominator), then the node's steps in its order
   (Segmenter.segment_pair: the left eye through the network, then the right eye while the left eye's
   maps, instruments, outline and parts are made on the second thread; AFTER_NETWORK: the right eye's
   maps and near-black pixels, the tracks, the label/instance/parts images and the overlay drawn while
   the right eye is searched, stereo, which waits for it and refines the tips' depth on the images),
   then for comparison the same work in the order before (one batch, then everything after it), the
   same maps with torch's kernels and the old postprocess. `after_network_ratio` is that of the order the
   node takes with the backend: eye by eye with ONNX Runtime, one batch with eager torch (whose ops
   need the GIL that the search beside them holds).

    python -m mffseg_ros.tools.bench_postprocess --size 1024x1280 --frames 6
"""
import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mffseg_ros.data.synth import SceneGenerator, StereoRig
from mffseg_ros.inference.instruments import find_instruments
from mffseg_ros.inference.perception import InstrumentPerception
from mffseg_ros.inference.results import network_maps
from mffseg_ros.inference.segmenter import Segmenter
from mffseg_ros.inference.stereo import StereoCalibration
from mffseg_ros.inference.tracking import Tracker
from mffseg_ros.sizes import parse_size
from mffseg_ros.visualize import instrument_overlay


def _dice(a, b):
    total = a.sum() + b.sum()
    return float('nan') if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def old_postprocess(seg, logits, size):
    """The previous method: all logits bilinearly upsampled to the input size, argmax per task."""
    with torch.inference_mode():
        up = F.interpolate(logits.float(), size=size, mode='bilinear', align_corners=False)
        return {t: up[:, s].argmax(1).to(torch.uint8).numpy() for t, s in seg.task_slices.items()}


def _torch_maps(seg, logits):
    """The network-grid maps as the GPU path computes them (results.network_maps), here on the CPU:
    what the node's OpenCV version (results.host_maps) is measured against."""
    with torch.inference_mode():
        return {k: v.numpy() for k, v in network_maps(logits, seg.task_slices).items()}


def _timed(times, key, fn, *args):
    """fn(*args), recording the CPU time of this process (ms, all its threads: the right eye's
    instruments run on a second one; a shared machine's other processes do not inflate it the way they
    inflate wall time) and the wall time (what a frame waits; with a free second core the right eye's
    thread makes it shorter than the CPU time)."""
    start, start_wall = time.process_time(), time.perf_counter()
    out = fn(*args)
    times['cpu'].setdefault(key, []).append(1000 * (time.process_time() - start))
    times['wall'].setdefault(key, []).append(1000 * (time.perf_counter() - start_wall))
    return out


# The node's steps, in its order (ros/segment_node.py, Segmenter.segment_pair): the left eye through the
# network, then the right eye while the left eye's maps and instruments (and the outline and parts its
# images need) are made on the second thread; after the network, the steps below. Their sum is what the
# node adds to the network.
NETWORK_EYE_BY_EYE = "network, eye by eye (the left eye's maps and instruments beside the right eye's pass)"
AFTER_NETWORK = ("right eye's maps (+ near-black pixels)", "left eye's search (made beside the network), waited for",
                 'tracking (right eye search started)', 'label, instance, parts images', 'overlay',
                 'stereo: waits for the right eye, matches, triangulates (tip depth from the images)')
AFTER_NETWORK_TOTAL = 'after the network: the steps above, in all'
ONE_BATCH = ('for comparison: the order before (one batch through the network, then the maps, the left eye '
             'searched, the images drawn as the right eye is searched), after the network')


def _images(frame):
    return frame.labels_image(), frame.instance_ids_image(), frame.parts_image()


def _node_steps(times, seg, perception, x, pair, resized, calibration, stamp):
    """The node's steps, each timed (segment_pair's, taken apart to time them), and the sum of those after
    the network per frame; returns the maps."""
    right_maps, waited, begin, images, overlay, stereo = AFTER_NETWORK
    early = functools.partial(perception.search, prepare=('parts',))

    def network():
        beside = seg.results_beside(seg.forward(x[:1]), pair[:1], resized[:1], early)
        return beside, seg.forward(x[1:])

    beside, right_logits = _timed(times, NETWORK_EYE_BY_EYE, network)
    res_right = _timed(times, right_maps, lambda: seg.results(right_logits, pair[1:], resized[1:])[0])
    res_left, searched = _timed(times, waited, beside.result)
    frame = _timed(times, begin, lambda: perception.begin(res_left, res_right, calibration, stamp, images_first=True,
                                                          searched=searched))
    _timed(times, images, _images, frame)
    _timed(times, overlay, instrument_overlay, pair[0], frame)
    _timed(times, stereo, perception.finish, frame)
    for clock in ('cpu', 'wall'):  # the median of per-frame sums, as the comparison is timed
        times[clock].setdefault(AFTER_NETWORK_TOTAL, []).append(sum(times[clock][k][-1] for k in AFTER_NETWORK))
    return [res_left, res_right]


def _one_batch(perception, seg, logits, pair, resized, calibration, stamp):
    """The order before: the pair's logits of one batch, their maps, the left eye searched (the outline
    and parts made beside it), the images drawn while the right eye is searched, then stereo."""
    results = seg.results(logits, pair, resized)
    frame = perception.begin(results[0], results[1], calibration, stamp, images_first=True, prepare=('parts',))
    _images(frame)
    instrument_overlay(pair[0], frame)
    perception.finish(frame)


def run(weights=None, size=(1024, 1280), frames=6, seed=5, threads=1, backend='torch'):
    torch.set_num_threads(threads)
    seg = Segmenter.load(weights, device='cpu', backend=backend, threads=threads)
    seg.warm_up(size, batch=2)  # ONNX export and session of both shapes (a batch, one eye), not timed
    seg.warm_up(size, pair=True)
    rig = StereoRig.endovis_like().resized(size[1], size[0])
    scenes = SceneGenerator(rig, seed=seed, num_instruments=(2, 3))
    calibration = StereoCalibration(rig.P_left, rig.P_right)
    perception, perception_before = InstrumentPerception(), InstrumentPerception()
    tracker = Tracker()  # a second tracker fed the same instruments: its cost alone
    times, agreement, dice = {'cpu': {}, 'wall': {}}, {'parts': [], 'type': [], 'binary': []}, {}
    for i in tqdm(range(frames), desc='postprocess bench', unit='frame'):
        frame = scenes.frame(i * 7)
        pair = [frame.left, frame.right]
        resized = seg.resize(pair)
        x = seg.preprocess(pair)
        logits = _timed(times, 'network (stereo batch)', seg.forward, x)
        # The node's steps in the node's order, and the same work in the order before (after one batch,
        # from its logits, on maps of its own), which goes first alternating frame by frame; the old method
        # (for the accuracy comparison) only after them: its 100+ MB of upsampled logits would push the
        # fresh maps out of the CPU's caches and slow the steps that follow it, which the node never pays.
        if i % 2:
            _timed(times, ONE_BATCH, _one_batch, perception_before, seg, logits, pair, resized, calibration, i * 0.1)
        results = _node_steps(times, seg, perception, x, pair, resized, calibration, i * 0.1)
        if not i % 2:
            _timed(times, ONE_BATCH, _one_batch, perception_before, seg, logits, pair, resized, calibration, i * 0.1)
        found, instance_map = find_instruments(results[0])
        _timed(times, 'of which: tracker update (left eye)', tracker.update, found, instance_map, size)
        _timed(times, 'for comparison: the same maps with torch kernels', _torch_maps, seg, logits)
        old = _timed(times, 'old postprocess (upsample logits)', old_postprocess, seg, logits, size)
        truth = frame.labels_left
        new = {'parts': results[0].parts, 'type': results[0].type, 'binary': results[0].binary}
        old_binary = old['type'][0] > 0
        for task, old_map in (('parts', old['parts'][0]), ('type', old['type'][0]), ('binary', old_binary)):
            agreement[task].append(float((old_map == new[task]).mean()))
        for name, parts_map, binary in (('old', old['parts'][0], old_binary), ('new', new['parts'], new['binary'])):
            dice.setdefault(f'{name} binary', []).append(_dice(binary, truth['binary'] > 0))
            for c, part in ((1, 'shaft'), (2, 'wrist'), (3, 'claspers')):
                dice.setdefault(f'{name} {part}', []).append(_dice(parts_map == c, truth['parts'] == c))
    cpu, wall = ({k: float(np.median(v)) for k, v in times[clock].items()} for clock in ('cpu', 'wall'))
    # The order the node takes with this backend (Segmenter.segment_pair): eye by eye where the network's
    # pass leaves the GIL to the search beside it, else one batch. Both are timed above, for comparison.
    eye_by_eye = seg.pairs_eye_by_eye
    node_total = AFTER_NETWORK_TOTAL if eye_by_eye else ONE_BATCH
    return {
        'size': list(size), 'frames': frames, 'threads': threads, 'model': seg.describe(),
        'node_order': 'eye by eye' if eye_by_eye else 'one batch',
        'median_cpu_ms': cpu, 'ratio_to_network': {k: v / cpu['network (stereo batch)'] for k, v in cpu.items()},
        'median_wall_ms': wall,
        'wall_ratio_to_network': {k: v / wall['network (stereo batch)'] for k, v in wall.items()},
        'after_network_ratio': {'cpu': cpu[node_total] / cpu['network (stereo batch)'],
                                'wall': wall[node_total] / wall['network (stereo batch)']},
        'label_agreement_old_vs_new': {k: float(np.mean(v)) for k, v in agreement.items()},
        'dice_vs_ground_truth': {k: float(np.nanmean(v)) for k, v in dice.items()},
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--weights', default=None)
    p.add_argument('--size', default='1024x1280')
    p.add_argument('--frames', type=int, default=6)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--backend', default='torch', help='the network backend (torch, onnx, auto): its logits and time')
    p.add_argument('--out', type=Path, default=None, help='write the report as JSON here')
    args = p.parse_args(argv)
    report = run(args.weights, parse_size(args.size, what='--size'), args.frames, threads=args.threads,
                 backend=args.backend)
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
