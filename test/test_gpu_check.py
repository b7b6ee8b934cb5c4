"""scripts/gpu_check.sh --dry-run: the GPU run's steps on the CPU at tiny sizes, results in one folder."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_one_results_folder(tmp_path):
    out = tmp_path / 'out'
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, GPU_CHECK_BUDGET_S='300',
               PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    proc = subprocess.run([str(REPO / 'scripts' / 'gpu_check.sh'), '--dry-run'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {'summary.md', 'gpu_check.tar.gz', 'bench_model.md'} <= set(files)
    summary = (out / 'summary.md').read_text()
    steps = {line.split('|')[1].strip(): line.split('|')[2].strip() for line in summary.splitlines()
             if line.startswith('| ') and not line.startswith('| step')}
    for name in ('tests', 'bench_model', 'bench_peers'):
        assert steps[name] == 'ok', f'{name}: {steps[name]}'
    assert steps['bench_ros'] == 'ok' or steps['bench_ros'].startswith('skipped: rclpy')
    assert 'dry run' in summary and '| MFF | main | 64x64 | fp32 | onnx |' in summary
    assert 'U-Net (plain)' in (out / 'bench_peers.md').read_text()
