"""The default model's held-out evaluation: one command, the same sets and input sizes for any weights.

    python -m mffseg_ros.tools.heldout --weights W --out DIR [--frames 32] [--data-root ../shared/data]

Sets: synthetic scenes of an unseen seed (tissue and lab backgrounds), synthetic scenes of an unseen seed
AND style (lab backgrounds only: pads, phantoms, drapes, cavities), and the real video VID03
(CholecInstanceSeg, binary labels) when the data root has it. Each set is scored at network inputs
fitting 256x320, 384x480 and 512x640 (and at the weights' own default; a size that gives the same
network input as the default is not scored again: it shares the default's figures and folder).
Writes DIR/summary.json, DIR/summary.md and one `mffseg evaluate`-style folder per set and size."""
import argparse
import json
import logging
import sys
from pathlib import Path

from mffseg_ros.data.datasets import build_dataset
from mffseg_ros.errors import MffsegError, one_line
from mffseg_ros.evaluation.evaluate import evaluate
from mffseg_ros.inference.segmenter import Segmenter
from mffseg_ros.sizes import parse_size

log = logging.getLogger(__name__)
SIZES = ('256x320', '384x480', '512x640')
SYNTH_FRAME = (512, 640)


def heldout_sets(frames, data_root):
    """{name: spec}: the held-out sets (VID03 only when present)."""
    h, w = SYNTH_FRAME
    sets = {'synth_seed999': f'synth:?frames={frames}&seed=999&size={h}x{w}',
            'synth_lab_seed998': f'synth:?frames={frames}&seed=998&size={h}x{w}&background=lab'}
    vid03 = Path(data_root) / 'cholec_instance_seg'
    if (vid03 / 'VID03').is_dir():
        sets['vid03'] = f'cholec_instance:{vid03 / "VID03"}'
    return sets


class Cached:
    """A data set whose samples are read once (every size scores the same frames)."""

    def __init__(self, base):
        self.items = [base[i] for i in range(len(base))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _dice(summary, key='paper'):
    return None if not summary or not summary.get('images') else summary[key]['dice']


def row_of(report):
    """The figures of one evaluation that the model card reports."""
    tasks = report['tasks']
    row = {'binary': _dice(tasks.get('binary'))}
    for task in ('parts', 'type'):
        s = tasks.get(task)
        if s and s.get('images'):
            row[task] = _dice(s)
            row[f'{task}_per_class'] = {n: m['dice'] for n, m in s['per_class'].items() if n != 'background'}
    if report.get('instrument_types'):
        row['type_per_instrument'] = report['instrument_types']['type_accuracy']
    return row


def run_heldout(weights, out, *, frames=32, data_root='../shared/data', sizes=SIZES, device='auto', progress=True):
    out = Path(out)
    sets = heldout_sets(frames, data_root)
    summary = {'weights': str(weights), 'frames_per_synthetic_set': frames, 'sets': sets, 'results': {}}
    default = Segmenter.load(weights, device=device)
    summary['default_input'] = default.describe()
    for name, spec in sets.items():
        samples = Cached(build_dataset(spec))
        fh, fw = samples[0]['image'].shape[:2]
        results = summary['results'][name] = {}
        for size in ('default',) + tuple(sizes):
            if size == 'default':
                segmenter = default
            else:  # fit the frame into size, aspect kept (VID03 frames are 16:9)
                th, tw = parse_size(size, multiple=32)
                segmenter = Segmenter.load(weights, device=device, input_scale=min(th / fh, tw / fw))
                if segmenter.network_size(fh, fw) == default.network_size(fh, fw):
                    results[size] = results['default']  # the very same network input: scored already
                    continue
            log.info('%s at %s: %s', name, size, segmenter.describe())
            report = evaluate(segmenter, samples, worst=4 if size == 'default' else 0,
                              out_dir=out / name / size, progress=progress,
                              info={'weights': str(weights), 'data': spec, 'model': segmenter.describe()})
            results[size] = row_of(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
    (out / 'summary.md').write_text(format_summary(summary) + '\n')
    return summary


def _f(v):
    return '–' if v is None else f'{v:.3f}'


def format_summary(summary):
    lines = [f'Held-out evaluation of `{summary["weights"]}` (default input: {summary["default_input"]})', '',
             '| set | input | binary Dice | parts Dice | shaft | wrist | claspers | type Dice | type per instrument |',
             '|---|---|---|---|---|---|---|---|---|']
    for name, by_size in summary['results'].items():
        for size, r in by_size.items():
            pc = r.get('parts_per_class', {})
            lines.append(f'| {name} | {size} | {_f(r.get("binary"))} | {_f(r.get("parts"))} | '
                         f'{_f(pc.get("shaft"))} | {_f(pc.get("wrist"))} | {_f(pc.get("claspers"))} | '
                         f'{_f(r.get("type"))} | {_f(r.get("type_per_instrument"))} |')
    lines += ['', 'Type Dice per class (default input):', '']
    for name, by_size in summary['results'].items():
        per = by_size['default'].get('type_per_class')
        if per:
            lines.append(f'- {name}: ' + ', '.join(f'{n} {_f(v)}' for n, v in per.items()))
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m mffseg_ros.tools.heldout', description=__doc__.split('\n')[0])
    parser.add_argument('--weights', required=True)
    parser.add_argument('--out', required=True, type=Path)
    parser.add_argument('--frames', type=int, default=32, help='frames per synthetic set (default 32)')
    parser.add_argument('--data-root', default='../shared/data', help='folder holding cholec_instance_seg/')
    parser.add_argument('--sizes', default=','.join(SIZES), help='network input sizes, comma-separated')
    parser.add_argument('--device', default='auto')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='[%(levelname)s] %(name)s: %(message)s')
    try:
        if args.frames < 1:
            raise MffsegError(f'--frames must be >= 1, got {args.frames}')
        sizes = [s for s in args.sizes.split(',') if s]
        for s in sizes:
            parse_size(s, what='--sizes', multiple=32)
        summary = run_heldout(args.weights, args.out, frames=args.frames, data_root=args.data_root, sizes=sizes,
                              device=args.device)
    except MffsegError as e:
        print(f'error: {one_line(e)}', file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
