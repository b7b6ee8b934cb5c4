"""The README's main command in a short mode, and synth bag -> play -> node -> outputs in this process."""
import json
import subprocess
import sys

import numpy as np
import pytest

from mffseg_ros.data.bags import bag_info
from mffseg_ros.evaluation.ground_truth import GT_TIP_DTYPE
from mffseg_ros.evaluation.instrument_scores import InstrumentScorer
from mffseg_ros.inference.instruments import UNKNOWN_TYPE
from mffseg_ros.inference.tip_records import TIP_DTYPE
from mffseg_ros.tools.demo import ground_truth, run_demo, score_frame

pytestmark = pytest.mark.filterwarnings('ignore:default weights')


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    """The README's demo command in a short mode, run once for the tests that need it: (process, its
    output folder)."""
    out = tmp_path_factory.mktemp('demo')
    cmd = [sys.executable, '-m', 'mffseg_ros.cli', 'demo', '--frames', '3', '--size', '128x160',
           '--rate', '2', '--device', 'cpu', '--out', str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300), out


def check_summary(summary, frames):
    assert summary['frames_published'] == frames
    assert 1 <= summary['frames_processed'] <= frames
    # Every processed frame was matched to ground truth by its stamp: the node carried the input stamp.
    assert len(summary['frames']) == summary['frames_processed']
    assert all(0.0 <= row['dice_binary'] <= 1.0 for row in summary['frames'])
    assert summary['node_diagnostics'] is not None and 'device' in summary['node_diagnostics']


def test_demo_command_short_mode(demo_run):
    proc, out = demo_run
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert '[demo] summary' in proc.stdout and 'Dice' in proc.stdout
    check_summary(json.loads((out / 'summary.json').read_text()), 3)
    assert (out / 'contact_sheet.png').stat().st_size > 0
    assert bag_info(out / 'synth_bag')['custom_data']['mffseg.source'] == 'synth'


def test_synth_bag_play_node_outputs_in_process(tmp_path):
    # Synthetic stereo bag -> play over DDS -> the node in this process (shipped model) -> its outputs,
    # scored against the bag's ground truth: segmentation, tips and their 3-D triangulation all work.
    summary = run_demo(tmp_path, frames=3, size=(512, 640), rate=1.0, device='cpu', in_process=True, verbose=False)
    check_summary(summary, 3)
    assert summary['dice_binary_mean'] > 0.8 and summary['dice_parts_mean'] > 0.5
    scores = summary['instruments']
    assert scores['tip_recall'] >= 0.5 and scores['tip_precision'] >= 0.5
    assert scores['tips_triangulated'] >= 1 and scores['tip_error_3d_mm_median'] < 30
    assert scores['axis_error_deg_median'] < 45  # the shaft poses arrived, in the order of the tips


def test_demo_bad_setup_is_one_line_before_any_work(tmp_path):
    not_a_folder = tmp_path / 'file'
    not_a_folder.write_text('x')
    for extra in (['--out', str(not_a_folder)], ['--weights', str(tmp_path / 'missing.safetensors')],
                  ['--device', 'tpu']):
        proc = subprocess.run([sys.executable, '-m', 'mffseg_ros.cli', 'demo', '--out', str(tmp_path / 'o'), *extra],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
        assert not (tmp_path / 'o' / 'synth_bag').exists()


def test_scoring_the_ground_truth_against_itself_is_perfect(demo_run):
    """Dice 1, every visible instrument found at 0 px / 0 mm / 0 degrees, no false positive."""
    _, out = demo_run
    gt = ground_truth(out / 'synth_bag')
    scorer = InstrumentScorer(match_px=5)
    for frame in gt.values():
        assert score_frame(frame['type'], frame['parts'], frame)['dice_binary'] == 1.0
        truth = frame['tips']
        predicted = np.zeros(len(truth), TIP_DTYPE)
        for name in ('x', 'y', 'z', 'u', 'v', 'instance_id', 'type_id'):
            predicted[name] = truth[name]
        scorer.add(predicted, truth, np.column_stack([truth['ax'], truth['ay'], truth['az']]))
    s = scorer.summary()
    assert s['tips_visible'] > 0 and s['tip_precision'] == s['tip_recall'] == s['type_accuracy'] == 1.0
    assert s['tip_error_2d_px_median'] == 0 and s['track_id_switches'] == 0
    assert s['tips_triangulated'] == 0 or s['tip_error_3d_mm_median'] == 0
    assert s['axis_error_deg_median'] < 0.01


def test_scores_count_false_positives_missed_instruments_and_id_switches():
    truth = np.zeros(2, GT_TIP_DTYPE)
    truth['u'], truth['v'], truth['instance_id'], truth['type_id'] = [100, 300], [100, 100], [1, 2], [3, 5]
    truth['x'] = truth['y'] = truth['z'] = np.nan
    scorer = InstrumentScorer(match_px=10)
    for frame, ids in enumerate(([7, 8], [7, 9], [7, 9])):
        predicted = np.zeros(3, TIP_DTYPE)
        predicted['u'], predicted['v'] = [103, 300, 500], [100, 104, 500]  # the third is a false positive
        predicted['instance_id'] = [*ids, 99]
        predicted['type_id'] = [3, UNKNOWN_TYPE, 1]
        counts = scorer.add(predicted if frame else predicted[:2], truth if frame < 2 else truth[:1])
        assert counts == [{'matched': 2, 'false_positives': 0, 'missed': 0, 'worst_error_px': 4.0},
                          {'matched': 2, 'false_positives': 1, 'missed': 0, 'worst_error_px': 4.0},
                          {'matched': 1, 'false_positives': 2, 'missed': 0, 'worst_error_px': 3.0}][frame]
    s = scorer.summary()
    assert s['tips_predicted'] == 8 and s['tips_visible'] == 5 and s['tips_matched'] == 5
    assert s['false_positives'] == 3 and s['tip_precision'] == pytest.approx(5 / 8)
    assert s['track_id_switches'] == 1  # instrument 2: id 8, then 9
    assert s['type_accuracy'] == pytest.approx(3 / 5) and s['type_unknown_rate'] == pytest.approx(2 / 5)
    assert s['tip_error_2d_px_median'] == 3.0
