"""Checks that need a CUDA device (skipped without one; scripts/gpu_check.sh runs them on a GPU machine).
The fast path's agreement with the eager pipeline on CUDA is in test_fast_path.py."""
import copy

import numpy as np
import pytest
import torch

from mffseg_ros.inference.segmenter import Segmenter

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
    (buffers are reused: a stale input or output would show here, as the scenes differ)."""
    from mffseg_ros.data.synth import SynthDataset
    scenes = SynthDataset(3, size=(240, 320), seed=7)
    frames = [scenes[i]['image'] for i in range(3)]
    segs = {}
    for graphs in (False, True):
        segs[graphs] = Segmenter.load(None, device='cuda', precision=precision, input_size=(128, 160),
                                      cuda_graphs=graphs)
        segs[graphs].warm_up((240, 320), batch=2)
    assert segs[True]._fast_path.plan(2, 240, 320).graph is not None
    previous = None
    for frame in frames:
        pair = [frame, np.ascontiguousarray(frame[:, ::-1])]
        eager, graphed = (segs[g].segment_batch(pair) for g in (False, True))
        for a, b in zip(eager, graphed):
            assert (a.type == b.type).mean() > 0.995 and (a.parts == b.parts).mean() > 0.995
        if previous is not None:  # the check has power: consecutive scenes give different labels
            assert (eager[0].type != previous).mean() > 0.005
        previous = eager[0].type
