"""A short malformed-input run (scripts/fault_inject.py) against the node as its own process: bombs,
oversized/tiny/truncated/garbage frames on both eyes and bad camera_infos, then valid stereo frames.
The full run (5,000 messages) is the same script with its defaults; figures in docs/ROS_INTERFACE.md."""
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / 'scripts' / 'fault_inject.py'


def test_short_malformed_input_run():
    proc = subprocess.run([sys.executable, str(SCRIPT), '--messages', '120', '--valid', '3'],
                          capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.stdout.strip(), proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, result
    assert result['node_alive_after'] and result['exit_code_on_sigint'] == 0
    assert result['rejected'] == result['sent']['bad_images'] > 0  # every malformed image, on both eyes
    assert result['rejected.left'] == result['rejected.right'] == result['sent']['bad_images'] // 2
    assert result['camera_info_rejected'] == result['sent']['bad_camera_infos'] > 0
    assert result['errors'] == 0 and result['error_lines_logged'] == 0 and result['tracebacks'] == 0
    assert result['sent']['valid_pairs_after'] == 3 and not result['valid_pairs_without_labels_and_tips']
    assert result['calibration.left'].startswith('ok (kept the last good one); rejected:')
