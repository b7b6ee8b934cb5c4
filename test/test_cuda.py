"""Checks that need a CUDA device (skipped without one; scripts/gpu_check.sh runs them on a GPU machine).
The fast path's agreement with the eager pipeline on CUDA is in test_fast_path.py."""
import copy

import numpy as np
import pytest
import torch

from mffseg_ros.inference.segmenter import Segmenter
from mffseg_ros.model.mffnet import MFFNet
from mffseg_ros.model.weights import default_metadata

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')


def test_amp_training_step_lowers_the_loss(tmp_path):
    from mffseg_ros.training.config import DEFAULTS, resolve_specs
    from mffseg_ros.training.loader import training_samples
    from mffseg_ros.training.trainer import Trainer
    cfg = copy.deepcopy(DEFAULTS)
    spec = 'synth:?frames=4&seed=3&size=128x160'
    cfg['data']['train'] = [spec]
    cfg['train_size'] = [128, 160]
    cfg['workers'] = 0
    cfg['recipe'].update({'iters': 3, 'batch_size': 2, 'amp': True})
    trainer = Trainer(cfg, tmp_path, device='cuda')
    assert trainer.amp
    samples = training_samples(cfg, resolve_specs([spec], '.'))
    batch = torch.utils.data.default_collate([samples[0], samples[1]])
    with torch.no_grad():
        before = float(trainer.seg_losses(batch, disc=copy.deepcopy(trainer.disc))[0])
    rows = [trainer.step(batch) for _ in range(3)]
    assert all(np.isfinite(r['loss']) for r in rows)
    with torch.no_grad():
        after = float(trainer.seg_losses(batch, disc=copy.deepcopy(trainer.disc))[0])
    assert after < before


@pytest.mark.parametrize('precision', ['fp16', 'bf16'])
def test_cuda_graph_replay_gives_the_eager_fast_path_labels(precision):
    """Graph replay per frame gives what the same pipeline gives without graphs, frame after frame
    (buffers are reused: a stale input or output would show here)."""
    torch.manual_seed(0)
    model = MFFNet().eval()
    frames = [np.random.default_rng(i).integers(0, 256, (240, 320, 3), dtype=np.uint8) for i in range(3)]
    segs = {}
    for graphs in (False, True):
        clone = copy.deepcopy(model)
        segs[graphs] = Segmenter(clone, default_metadata(clone), device='cuda', precision=precision,
                                 input_size=(128, 160), cuda_graphs=graphs)
        segs[graphs].warm_up((240, 320), batch=2)
    assert segs[True]._fast_path.plan(2, 240, 320).graph is not None
    for frame in frames:
        eager, graphed = (segs[g].segment_batch([frame, frame[::-1].copy()]) for g in (False, True))
        for a, b in zip(eager, graphed):
            assert (a.type == b.type).mean() > 0.999 and (a.parts == b.parts).mean() > 0.999
