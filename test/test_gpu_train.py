"""scripts/gpu_train.sh rehearsed on the CPU (DRY_RUN=1): the GPU command's every step (train with real
pixels from init weights, held-out evaluation of both weights, fp16 export) runs and writes its folder,
so GPU minutes are never spent debugging it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mffseg_ros.model import read_metadata

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    """cholecseg8k/video01 (3 frames, masks) and cholec_instance_seg/VID03 (2 frames, polygons)."""
    root = tmp_path_factory.mktemp('data')
    vid = root / 'cholecseg8k' / 'video01'
    (vid / 'frames').mkdir(parents=True)
    (vid / 'masks').mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        img = rng.integers(60, 200, (72, 128, 3), dtype=np.uint8)
        mask = np.zeros((72, 128), np.uint8)
        img[20:32, :60] = 140
        mask[20:32, :60] = 255
        cv2.imwrite(str(vid / 'frames' / f'video01_{i:06d}_frame.png'), img)
        cv2.imwrite(str(vid / 'masks' / f'video01_{i:06d}_mask.png'), mask)
    v03 = root / 'cholec_instance_seg' / 'VID03'
    (v03 / 'img_dir').mkdir(parents=True)
    (v03 / 'ann_dir').mkdir()
    for i in range(2):
        cv2.imwrite(str(v03 / 'img_dir' / f'f{i}.png'), rng.integers(0, 255, (72, 128, 3), dtype=np.uint8))
        shape = {'label': 'grasper', 'points': [[0, 10], [50, 10], [50, 30], [0, 30]], 'group_id': None}
        (v03 / 'ann_dir' / f'f{i}.json').write_text(json.dumps({'shapes': [shape]}))
    return root


def test_gpu_train_dry_run_on_cpu(data_root, tmp_path):
    out = tmp_path / 'gpu'
    init = tmp_path / 'init.safetensors'
    init.write_bytes((REPO / 'models' / 'mffseg_default.safetensors').read_bytes())
    env = dict(os.environ, DRY_RUN='1', OUT=str(out), DATA_ROOT=str(data_root), INIT_WEIGHTS=str(init),
               PYTHON=sys.executable, OMP_NUM_THREADS='1')
    proc = subprocess.run(['bash', str(REPO / 'scripts' / 'gpu_train.sh')], env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = read_metadata(out / 'run' / 'weights.safetensors')
    history = meta.extra['training_history']
    before = read_metadata(init).extra
    assert history[-1]['iterations'] == 2 and len(history) == len(before.get('training_history', [None])) + 1
    assert meta.extra['total_iterations'] == before.get('total_iterations', history[0]['iterations']) + 2
    assert tuple(meta.preprocessing.train_size) == (64, 96)
    kinds = [s['kind'] for s in meta.provenance.train_data]
    assert kinds == ['synth', 'composite']  # real pixels in the rehearsal too
    for which in ('new', 'init'):
        summary = json.loads((out / f'heldout_{which}' / 'summary.json').read_text())
        assert set(summary['results']) == {'synth_seed999', 'synth_lab_seed998', 'vid03'}
        assert 0 <= summary['results']['vid03']['default']['binary'] <= 1
    shipped = read_metadata(out / 'mffseg_default.safetensors')
    assert shipped.stored_dtype == 'float16' and 'heldout' in shipped.metrics
    assert (out / 'gpu_train.log').stat().st_size > 0 and 'done in' in proc.stdout


def test_gpu_train_refuses_without_cuda(tmp_path):
    pytest.importorskip('torch')
    import torch
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    env = dict(os.environ, OUT=str(tmp_path / 'gpu'), PYTHON=sys.executable)
    proc = subprocess.run(['bash', str(REPO / 'scripts' / 'gpu_train.sh')], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and 'no CUDA device' in proc.stdout + proc.stderr
