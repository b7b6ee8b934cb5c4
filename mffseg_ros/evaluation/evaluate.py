"""Runs a Segmenter over a data set, scores every task and writes metrics.json, metrics.md and overlay
PNGs of the worst frames. Samples follow docs/CONTRACTS.md (label 255 = ignore)."""
import heapq
import json
import logging
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mffseg_ros.data.samples import sequence_name
from mffseg_ros.errors import MffsegError
from mffseg_ros.evaluation.instance_tracks import InstanceTrackScorer, format_track_summary
from mffseg_ros.evaluation.metrics import TaskMeter
from mffseg_ros.inference.instruments import DEFAULT_MIN_AREA
from mffseg_ros.inference.perception import InstrumentPerception
from mffseg_ros.model.classes import NUM_CLASSES, TASK_CLASSES
from mffseg_ros.visualize import contact_sheet, instrument_overlay, overlay, save_png

log = logging.getLogger(__name__)
TASKS = ('parts', 'type', 'binary')
OTHER_TYPE = NUM_CLASSES['type'] - 1  # drawn for "instrument of unknown type" (binary-only labels)


def _prediction(result, task):
    if task == 'binary':
        return np.asarray(result.binary, dtype=np.uint8)
    return getattr(result, task)


def _display_maps(type_map, parts_map, binary_map):
    """Type and parts maps for an overlay: 255 -> 0, and binary-only labels shown as 'other'."""
    def clean(m):
        return None if m is None else np.where(m == 255, 0, m).astype(np.uint8)
    type_map, parts_map = clean(type_map), clean(parts_map)
    if type_map is None or not type_map.any():
        binary = clean(binary_map)
        if binary is not None and binary.any():
            type_map = np.where(binary > 0, OTHER_TYPE, 0).astype(np.uint8)
    if type_map is None:
        type_map = np.zeros(binary_map.shape, np.uint8)
    return type_map, parts_map


def worst_frame_picture(sample, result, score):
    """Side by side: prediction overlay (with tips) and ground-truth overlay, captioned."""
    image = sample['image']
    gt_type, gt_parts = _display_maps(sample.get('type'), sample.get('parts'), sample.get('binary'))
    pred = instrument_overlay(image, InstrumentPerception().process(result))
    truth = overlay(image, gt_type, gt_parts)
    name = sample.get('name', '')
    return contact_sheet([pred, truth], cols=2,
                         labels=[f'prediction  {name}  IoU {score:.3f}', 'ground truth'])


def resolve_tasks(requested, segmenter):
    """Tasks to score: 'all' = every task the model can answer; a named task the model lacks raises."""
    heads = set(segmenter.tasks)
    answerable = [t for t in TASKS if t == 'binary' or t in heads]  # binary comes from any head
    if requested in (None, 'all'):
        return answerable
    if requested not in TASKS:
        raise MffsegError(f'unknown task {requested!r} (tasks: {", ".join(TASKS)}, all)')
    if requested not in answerable:
        where = segmenter.weights_path or 'the model'
        raise MffsegError(f'{where}: the model has no {requested} head (heads: {", ".join(sorted(heads))})')
    return [requested]


class InstrumentTypeMeter:
    """Type accuracy per instrument: an instrument (a ground-truth instance with a known type) counts as
    right when the predicted type most voted over its pixels, background aside, is its type. This is
    what per-instrument outputs see (they vote), where per-pixel Dice punishes scattered pixels."""

    def __init__(self):
        self.counts = {}  # true type -> [right, total]

    def add(self, sample, type_pred):
        instance, truth = sample.get('instance'), sample.get('type')
        if instance is None or truth is None or type_pred is None or not instance.any():
            return
        for iid in np.unique(instance[instance > 0]):
            on = instance == iid
            true_types = truth[on]
            true_types = true_types[(true_types > 0) & (true_types < 255)]
            if not len(true_types):
                continue
            true_type = int(np.bincount(true_types).argmax())
            votes = np.bincount(type_pred[on].astype(np.int64), minlength=NUM_CLASSES['type'])[1:]
            right = votes.any() and int(votes.argmax()) + 1 == true_type
            entry = self.counts.setdefault(true_type, [0, 0])
            entry[0] += int(right)
            entry[1] += 1

    def summary(self):
        if not self.counts:
            return None
        right = sum(c[0] for c in self.counts.values())
        total = sum(c[1] for c in self.counts.values())
        names = TASK_CLASSES['type']
        return {'instruments': total, 'type_accuracy': right / total,
                'per_type': {names[t]: {'accuracy': c[0] / c[1], 'instruments': c[1]}
                             for t, c in sorted(self.counts.items())}}


class InstrumentTracks:
    """The node's instruments over the data set's videos (one InstrumentPerception per video, so tracks
    carry over from frame to frame as in the node), scored against the true instances where a frame has
    them (instance_tracks.py). Frames that stand alone (synthetic scenes) are scored one by one: their
    instrument counts mean something, their track ids do not, so tracks are scored per video only."""

    def __init__(self, config=None):
        self.videos, self.pooled = {}, InstanceTrackScorer(tracks=False)
        self._sequence, self._perception = None, None
        self.config = config  # PerceptionConfig (None: the node's defaults)

    def add(self, sample, result):
        truth = sample.get('instance')
        sequence = sequence_name(sample)
        if self._perception is None or sequence is None or sequence != self._sequence:
            self._perception, self._sequence = InstrumentPerception(self.config), sequence
        tracks = self._perception.process(result).instance_ids_image()
        if truth is None or not truth.any():
            return  # no instance labels in this frame: it only moves the tracks on
        self.pooled.add(tracks, truth, DEFAULT_MIN_AREA)
        if sequence is not None:
            self.videos.setdefault(sequence, InstanceTrackScorer()).add(tracks, truth, DEFAULT_MIN_AREA)

    def summary(self):
        if not self.pooled.frames:
            return None
        return {'all_frames': self.pooled.summary(),
                'videos': {name: scorer.summary() for name, scorer in self.videos.items()}}


def evaluate(segmenter, samples, *, tasks='all', worst=8, out_dir=None, progress=True, info=None, config=None):
    """Scores `segmenter` on `samples` (a sequence of sample dicts). Returns the report dict; with
    `out_dir`, also writes metrics.json, metrics.md and worst/NN_<name>.png (the `worst` lowest
    frames by their mean paper IoU over the scored tasks). Where samples carry instrument instances,
    the report also has 'instruments': the node's instruments and tracks (post-processing settings
    `config`, a PerceptionConfig; default the node's) scored against them."""
    task_list = resolve_tasks(tasks, segmenter)
    meters = {t: TaskMeter(t, TASK_CLASSES[t]) for t in task_list}
    instrument_types = InstrumentTypeMeter() if 'type' in task_list else None
    instrument_tracks = InstrumentTracks(config)
    worst_heap = []  # (-score, index, sample, result): a max-heap of the K lowest scores
    frame_scores = []
    total = len(samples)
    if total == 0:
        raise MffsegError('the data set is empty: nothing to evaluate')
    for index in tqdm(range(total), desc='evaluate', unit='frame', disable=not progress):
        sample = samples[index]
        result = segmenter.segment(sample['image'])
        if instrument_types is not None:
            instrument_types.add(sample, result.type)
        instrument_tracks.add(sample, result)
        ious = []
        for task, meter in meters.items():
            gt = sample.get(task)
            if gt is None:
                continue
            scores = meter.add(gt, _prediction(result, task), sample.get('name', str(index)))
            if scores is not None:
                ious.append(scores.paper['iou'])
        if not ious:
            continue
        score = float(np.mean(ious))
        frame_scores.append({'name': sample.get('name', str(index)), 'iou': score})
        if worst > 0:
            item = (-score, -index, sample, result)
            if len(worst_heap) < worst:
                heapq.heappush(worst_heap, item)
            elif item[:2] > worst_heap[0][:2]:
                heapq.heapreplace(worst_heap, item)

    report = dict(info or {})
    report['frames'] = total
    report['scored_frames'] = len(frame_scores)
    report['tasks'] = {t: m.summary() for t, m in meters.items()}
    if instrument_types is not None and instrument_types.summary() is not None:
        report['instrument_types'] = instrument_types.summary()
    if instrument_tracks.summary() is not None:
        report['instruments'] = instrument_tracks.summary()
    unlabelled = [t for t, m in meters.items() if not m.images]
    if unlabelled:
        log.warning('the data set labels no frame for task(s) %s: not scored', ', '.join(unlabelled))
    ranked = sorted(worst_heap, key=lambda it: (-it[0], -it[1]))
    report['worst'] = [{'name': s.get('name', str(-i)), 'iou': -neg} for neg, i, s, _ in ranked]
    if out_dir is not None:
        write_outputs(Path(out_dir), report, ranked)
    return report


def _safe_name(name):
    return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in str(name))[:80] or 'frame'


def write_outputs(out_dir, report, ranked):
    """worst/NN_<name>.png per worst frame (its path added to report['worst']), then the JSON and
    markdown reports."""
    for rank, (neg_score, _, sample, result) in enumerate(ranked, 1):
        picture = worst_frame_picture(sample, result, -neg_score)
        stem = Path(str(sample.get('name', rank))).stem
        path = save_png(out_dir / 'worst' / f'{rank:02d}_{_safe_name(stem)}.png', picture)
        report['worst'][rank - 1]['png'] = str(path.relative_to(out_dir))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / 'metrics.json').write_text(json.dumps(report, indent=2, allow_nan=False) + '\n')
        (out_dir / 'metrics.md').write_text(format_report(report) + '\n')
    except OSError as e:
        raise MffsegError(f'{out_dir}: cannot write the evaluation results ({e})') from e


def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '–'
    return f'{value:.{digits}f}' if digits else f'{value:.1f}'


def format_task(summary):
    """One task's markdown table: a row per class, the foreground mean and the paper averaging."""
    lines = [f'### {summary["task"]} ({summary["images"]} frames)', '',
             '| class | Dice | IoU | Hausdorff px | sensitivity | specificity | frames |',
             '|---|---|---|---|---|---|---|']

    def row(label, m, frames=''):
        return (f'| {label} | {_fmt(m["dice"])} | {_fmt(m["iou"])} | {_fmt(m["hausdorff"], 0)} | '
                f'{_fmt(m["sensitivity"])} | {_fmt(m["specificity"])} | {frames} |')
    for name, m in summary['per_class'].items():
        lines.append(row(name, m, m['images']))
    lines.append(row('**mean (instrument classes)**', summary['mean']))
    lines.append(row('**paper (per frame, classes present)**', summary['paper']))
    d = summary['dataset']
    lines += ['', f'Data-set-wide (confusion matrix): mean IoU {_fmt(d["mean_iou"])}, '
                  f'mean Dice {_fmt(d["mean_dice"])}.']
    return '\n'.join(lines)


def format_report(report):
    head = ['# Evaluation']
    for key in ('weights', 'data', 'model'):
        if report.get(key):
            head.append(f'- {key}: `{report[key]}`')
    head.append(f'- frames: {report["frames"]} ({report["scored_frames"]} with ground truth)')
    body = [format_task(s) for s in report['tasks'].values() if s['images']]
    if report.get('instrument_types'):
        it = report['instrument_types']
        per_type = ', '.join(f'{n} {_fmt(v["accuracy"], 2)} ({v["instruments"]})' for n, v in it['per_type'].items())
        body.append(f'### type per instrument (majority vote over its pixels)\n\n'
                    f'{_fmt(it["type_accuracy"])} of {it["instruments"]} instruments; per type: {per_type}')
    if report.get('instruments'):
        lines = ['### instruments and tracks (the node\'s instances against the true ones)', '',
                 '**all frames**', *format_track_summary(report['instruments']['all_frames'])]
        for name, summary in report['instruments']['videos'].items():
            lines += ['', f'**video {name}**', *format_track_summary(summary)]
        body.append('\n'.join(lines))
    if report.get('worst'):
        body.append('### worst frames (mean paper IoU over tasks)\n\n' + '\n'.join(
            f'{i}. {w["name"]}: {_fmt(w["iou"])}' for i, w in enumerate(report['worst'], 1)))
    return '\n\n'.join(['\n'.join(head)] + body)
