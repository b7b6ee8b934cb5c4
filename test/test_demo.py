"""The README's main command in a short mode, and synth bag -> play -> node -> outputs in this process."""
import json
import subprocess
import sys

import pytest

from mffseg_ros.tools.bags import bag_info
from mffseg_ros.tools.demo import ground_truth, run_demo, score_frame

pytestmark = pytest.mark.filterwarnings('ignore:default weights')


@pytest.fixture(scope='module')
def out(tmp_path_factory):
    return tmp_path_factory.mktemp('demo')


def check_summary(summary, frames):
    assert summary['frames_published'] == frames
    assert 1 <= summary['frames_processed'] <= frames
    # Every processed frame was matched to ground truth by its stamp: the node carried the input stamp.
    assert len(summary['frames']) == summary['frames_processed']
    assert all(0.0 <= row['dice_binary'] <= 1.0 for row in summary['frames'])
    assert summary['node_diagnostics'] is not None and 'device' in summary['node_diagnostics']


def test_demo_command_short_mode(out):
    cmd = [sys.executable, '-m', 'mffseg_ros.cli', 'demo', '--frames', '3', '--size', '128x160',
           '--rate', '2', '--device', 'cpu', '--out', str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
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
    assert summary['tips_triangulated'] >= 1 and summary['tip_error_3d_mm_median'] < 30


def test_demo_bad_setup_is_one_line_before_any_work(tmp_path):
    not_a_folder = tmp_path / 'file'
    not_a_folder.write_text('x')
    for extra in (['--out', str(not_a_folder)], ['--weights', str(tmp_path / 'missing.safetensors')],
                  ['--device', 'tpu']):
        proc = subprocess.run([sys.executable, '-m', 'mffseg_ros.cli', 'demo', '--out', str(tmp_path / 'o'), *extra],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
        assert not (tmp_path / 'o' / 'synth_bag').exists()


def test_score_frame_against_ground_truth(out):
    # Scoring the ground truth against itself is perfect: Dice 1 and every visible tip found at 0 px / 0 mm.
    gt = ground_truth(out / 'synth_bag')
    frame = next(f for f in gt.values() if (f['tips']['score'] == 1).any())  # one with a visible tip
    scores = score_frame(frame['type'], frame['parts'], frame['tips'], frame, match_px=5)
    assert scores['dice_binary'] == 1.0 and scores['tips']
    assert all(e['found'] and e['px'] == 0 and e['mm'] == 0 for e in scores['tips'])
