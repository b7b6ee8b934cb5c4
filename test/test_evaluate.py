"""`mffseg evaluate` end to end on tiny generated samples with real weights files and a real Segmenter."""
import json

import cv2
import numpy as np
import pytest
import torch
import yaml

from mffseg_ros.cli import main
from mffseg_ros.errors import MffsegError
from mffseg_ros.evaluation.evaluate import evaluate, format_report, resolve_tasks
from mffseg_ros.evaluation.metrics import score_image
from mffseg_ros.inference.perception import PerceptionConfig
from mffseg_ros.inference.segmenter import SegmentationResult, Segmenter
from mffseg_ros.model import MFFNet, save_weights

H, W = 64, 96


def _sample(i, rng):
    """A frame with one bright 'instrument' bar: shaft then claspers, type i % 7 + 1."""
    image = rng.integers(40, 90, (H, W, 3), dtype=np.uint8)
    parts = np.zeros((H, W), np.uint8)
    y0 = 10 + 6 * i
    parts[y0:y0 + 12, 8:60] = 1
    parts[y0:y0 + 12, 60:80] = 3
    image[parts > 0] = (220, 220, 230)
    type_map = np.where(parts > 0, i % 7 + 1, 0).astype(np.uint8)
    binary = (parts > 0).astype(np.uint8)
    if i == 2:  # a frame whose type is not annotated: type must be skipped, not scored as wrong
        type_map[:] = 255
    return dict(image=image, parts=parts, type=type_map, binary=binary,
                instance=binary.astype(np.uint16), name=f'vid1/frame{i:03d}.png')


@pytest.fixture(scope='module')
def samples():
    rng = np.random.default_rng(7)
    return [_sample(i, rng) for i in range(3)]


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('w') / 'tiny.safetensors'
    save_weights(path, MFFNet(), {'input_scale': 0.5, 'git_revision': 'test'})  # 32x64 network input
    return path


class GroundTruthSegmenter:
    """An oracle with the Segmenter interface that answers each frame's own ground truth: the scores
    must then be perfect, which checks that evaluate() compares the right maps."""
    tasks = {'parts': 4, 'type': 8}
    weights_path = None

    def __init__(self, samples):
        self.by_id = {id(s['image']): s for s in samples}

    def segment(self, rgb):
        s = self.by_id[id(rgb)]
        type_map = np.where(s['type'] == 255, 1, s['type']).astype(np.uint8)
        return SegmentationResult.from_labels(s['parts'], type_map, s['binary'])


def test_perfect_predictions_score_perfectly(samples):
    report = evaluate(GroundTruthSegmenter(samples), samples, worst=0, progress=False)
    for task in ('parts', 'type', 'binary'):
        s = report['tasks'][task]
        assert s['paper']['iou'] == 1.0 and s['paper']['dice'] == 1.0 and s['paper']['hausdorff'] == 0.0
        assert s['dataset']['mean_iou'] == 1.0
    assert report['tasks']['type']['images'] == 2  # frame 2 has no type labels
    assert report['tasks']['parts']['images'] == 3
    assert report['tasks']['parts']['per_class']['wrist']['iou'] is None  # never present
    assert report['worst'] == []
    it = report['instrument_types']  # frame 2's instrument has no type label: not counted
    assert it['instruments'] == 2 and it['type_accuracy'] == 1.0
    assert set(it['per_type']) == {'bipolar_forceps', 'prograsp_forceps'}
    # One bar moving down over three frames of one video: one instrument, one track.
    tracks = report['instruments']['videos']['vid1']
    assert tracks['precision'] == tracks['recall'] == tracks['frames_with_exact_count'] == 1.0
    assert tracks['track_ids'] == tracks['true_instruments'] == 1 and tracks['track_id_switches'] == 0
    assert 'instruments and tracks' in format_report(report)
    # The post-processing settings (mffseg evaluate --max-instruments) reach the node's instruments.
    nothing = evaluate(GroundTruthSegmenter(samples), samples, worst=0, progress=False,
                       config=PerceptionConfig(min_instance_area=10**9))
    assert nothing['instruments']['videos']['vid1']['recall'] == 0.0


def test_instance_scores_count_false_instruments_misses_and_id_switches():
    from mffseg_ros.evaluation.instance_tracks import InstanceTrackScorer
    truth = np.zeros((40, 60), np.uint16)
    truth[5:15, :40], truth[25:35, 20:] = 1, 2
    scorer = InstanceTrackScorer()
    scorer.add(truth.copy(), truth)  # perfect, track ids = true ids
    swapped = np.where(truth == 1, 7, np.where(truth == 2, 1, 0)).astype(np.uint16)
    scorer.add(swapped, truth)  # both instruments change track id: two switches
    split = swapped.copy()
    split[25:35, 45:] = 9  # a quarter of instrument 2 becomes a third instance: a false instrument
    split[5:15, :40] = 0  # and instrument 1 is missed
    split[0:3, 0:3] = 5  # a speck elsewhere: another false instrument
    counts = scorer.add(split, truth)
    assert counts == {'instruments': 3, 'visible': 2, 'matched': 1, 'false_instruments': 2, 'missed': 1}
    out = scorer.summary()
    assert out['track_id_switches'] == 2 and out['track_ids'] == 5 and out['true_instruments'] == 2
    assert out['precision'] == pytest.approx(5 / 7) and out['recall'] == pytest.approx(5 / 6)
    assert out['frames_with_exact_count'] == pytest.approx(2 / 3)
    small = np.zeros_like(truth)
    small[0:2, 0:2] = 3  # smaller than min_area: not visible, so predicting nothing is right
    assert scorer.add(np.zeros_like(truth), small, min_area=10)['visible'] == 0


def test_type_per_instrument_is_a_majority_vote(samples):
    """Scattered wrong pixels do not make an instrument wrong; a majority of another type does."""
    from mffseg_ros.evaluation.evaluate import InstrumentTypeMeter
    meter = InstrumentTypeMeter()
    s0, s1 = samples[0], samples[1]  # types 1 and 2
    noisy = s0['type'].copy()
    on = np.argwhere(s0['instance'] > 0)
    for y, x in on[::3]:  # a third of its pixels another type, many background
        noisy[y, x] = 5 if (y + x) % 2 else 0
    meter.add(s0, noisy)
    wrong = np.where(s1['instance'] > 0, 4, 0).astype(np.uint8)
    wrong[np.nonzero(s1['instance'])[0][:5], np.nonzero(s1['instance'])[1][:5]] = 2
    meter.add(s1, wrong)
    none = np.zeros_like(wrong)  # nothing predicted on an instrument: wrong, not skipped
    meter.add(s1, none)
    out = meter.summary()
    assert out['instruments'] == 3 and out['type_accuracy'] == pytest.approx(1 / 3)
    assert out['per_type']['bipolar_forceps'] == {'accuracy': 1.0, 'instruments': 1}
    assert out['per_type']['prograsp_forceps'] == {'accuracy': 0.0, 'instruments': 2}


def test_evaluate_real_segmenter_writes_json_md_and_worst_pngs(samples, weights, tmp_path):
    seg = Segmenter.load(weights, device='cpu')
    report = evaluate(seg, samples, tasks='all', worst=2, out_dir=tmp_path, progress=False,
                      info={'weights': str(weights)})
    # The report must agree with scoring the Segmenter's own outputs directly.
    results = [seg.segment(s['image']) for s in samples]
    expected_parts = np.mean([score_image(s['parts'], r.parts, 4).paper['iou'] for s, r in zip(samples, results)])
    assert report['tasks']['parts']['paper']['iou'] == pytest.approx(expected_parts)
    on_disk = json.loads((tmp_path / 'metrics.json').read_text())
    assert on_disk['tasks']['parts']['paper']['iou'] == pytest.approx(expected_parts)
    assert on_disk['frames'] == 3 and on_disk['weights'] == str(weights)
    cm = np.array(on_disk['tasks']['binary']['confusion_matrix'])
    assert cm.sum() == 3 * H * W
    # Two worst frames, lowest first, each a PNG of prediction | ground truth side by side.
    worst = on_disk['worst']
    assert len(worst) == 2 and worst[0]['iou'] <= worst[1]['iou']
    for w in worst:
        png = cv2.imread(str(tmp_path / w['png']))
        assert png is not None and png.shape[1] > 2 * W and png.shape[0] >= H
    md = (tmp_path / 'metrics.md').read_text()
    assert '| shaft |' in md and 'paper' in md and 'confusion matrix' in md
    assert format_report(report).startswith('# Evaluation')


def test_task_selection(weights):
    seg = Segmenter.load(weights, device='cpu')
    assert resolve_tasks('all', seg) == ['parts', 'type', 'binary']
    assert resolve_tasks('type', seg) == ['type']
    torch.manual_seed(0)
    binary_only = Segmenter(MFFNet(tasks={'binary': 2}), {'input_scale': 1.0}, device='cpu')
    assert resolve_tasks('all', binary_only) == ['binary']
    with pytest.raises(MffsegError, match='no parts head'):
        resolve_tasks('parts', binary_only)


def _write_folder_set(root):
    """A folder data set (images + part masks in EndoVis grey values) and its value->class mapping."""
    rng = np.random.default_rng(1)
    root.mkdir()
    for i in range(2):
        s = _sample(i, rng)
        cv2.imwrite(str(root / f'f{i}.png'), cv2.cvtColor(s['image'], cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / f'f{i}_mask.png'), (s['parts'] * 10).astype(np.uint8))
    mapping = root.parent / 'mapping.yaml'
    mapping.write_text(yaml.safe_dump({'parts': {0: 0, 10: 1, 20: 2, 30: 3}}))
    return f'folder:{root}?mapping={mapping}'


def test_cli_evaluate_end_to_end(weights, tmp_path, capsys):
    spec = _write_folder_set(tmp_path / 'set')
    out = tmp_path / 'eval'
    rc = main(['evaluate', '--weights', str(weights), '--data', spec, '--out', str(out),
               '--worst', '1', '--device', 'cpu'])
    assert rc == 0
    printed = capsys.readouterr().out
    assert '### parts (2 frames)' in printed and '### binary (2 frames)' in printed
    report = json.loads((out / 'metrics.json').read_text())
    assert report['tasks']['type']['images'] == 0  # the mapping labels no types
    assert len(list((out / 'worst').glob('*.png'))) == 1
    rc = main(['evaluate', '--weights', str(weights), '--data', spec, '--out', str(tmp_path / 'sized'),
               '--worst', '0', '--device', 'cpu', '--input-size', '64x96'])
    assert rc == 0 and 'input 64x96' in json.loads((tmp_path / 'sized' / 'metrics.json').read_text())['model']
    capsys.readouterr()
    assert main(['evaluate', '--weights', str(weights), '--data', spec, '--out', str(tmp_path / 'bad'),
                 '--input-size', '60x96']) == 2
    assert 'multiples of 32' in capsys.readouterr().err


def test_cli_user_errors_are_one_line(weights, tmp_path, capsys):
    spec = _write_folder_set(tmp_path / 'set')
    missing = tmp_path / 'nope.safetensors'
    assert main(['evaluate', '--weights', str(missing), '--data', spec, '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and 'Traceback' not in err
    assert main(['evaluate', '--weights', str(weights), '--data', 'nokind:/x', '--out', str(tmp_path / 'o'),
                 '--device', 'cpu']) == 2
    assert 'nokind' in capsys.readouterr().err


def test_evaluate_bag_scores_every_frame_and_draws_the_worst(tmp_path):
    """`mffseg evaluate --bag` on a generated stereo bag: per-frame counts add up to the summary, and
    the worst frames are drawn with their true tips (shipped weights, in process)."""
    bag, out = tmp_path / 'bag', tmp_path / 'scores'
    assert main(['bag', 'synth', str(bag), '--frames', '4', '--size', '192x240', '--seed', '5']) == 0
    assert main(['evaluate', '--bag', str(bag), '--out', str(out), '--device', 'cpu']) == 0
    scores = json.loads((out / 'bag_scores.json').read_text())
    summary, frames = scores['instruments'], scores['frames']
    assert summary['frames'] == len(frames) == 4
    for key, total in (('matched', 'tips_matched'), ('false_positives', 'false_positives'), ('missed', 'missed')):
        assert sum(f[key] for f in frames) == summary[total]
    assert all(f['matched'] + f['false_positives'] == f['instruments'] for f in frames)
    assert all(f['matched'] + f['missed'] == f['visible'] for f in frames)
    sheet = cv2.imread(str(out / 'worst_frames.png'))
    assert sheet is not None and sheet.shape[0] > 192 and sheet.shape[1] > 3 * 240
    # The node's max_instruments, scored: never more than one instrument a frame.
    assert main(['evaluate', '--bag', str(bag), '--out', str(out), '--device', 'cpu', '--max-instruments', '1']) == 0
    capped = json.loads((out / 'bag_scores.json').read_text())
    assert capped['max_instruments'] == 1 and scores['max_instruments'] == 0
    assert any(f['instruments'] > 1 for f in frames)  # uncapped, some frame had more
    assert all(f['instruments'] <= 1 for f in capped['frames'])
    assert main(['evaluate', '--bag', str(bag), '--out', str(out), '--max-instruments', '-1']) == 2
