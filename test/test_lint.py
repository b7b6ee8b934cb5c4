"""The tree passes the project's linter (ruff, settings in ruff.toml): pycodestyle, pyflakes, import
order and bugbear checks over the package, the tests, the scripts and the launch file."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def ruff():
    exe = Path(sys.executable).with_name('ruff')
    return str(exe) if exe.exists() else shutil.which('ruff')


def test_ruff_passes():
    exe = ruff()
    if exe is None:
        pytest.fail('ruff is not installed: it is pinned in requirements.txt (make test sets it up)')
    proc = subprocess.run([exe, 'check', '--no-cache', 'mffseg_ros', 'test', 'scripts', 'launch', 'setup.py'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
