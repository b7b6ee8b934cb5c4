"""Training: the losses, one optimisation step per loss configuration, checkpoint resume, and
`mffseg train` end to end on a data set generated here (tiny images, a few iterations, CPU)."""
import argparse
import copy
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mffseg_ros.cli import main
from mffseg_ros.errors import MffsegError
from mffseg_ros.model import load_weights, read_metadata
from mffseg_ros.training import losses
from mffseg_ros.training.checkpoint import CheckpointError
from mffseg_ros.training.cli import add_arguments, build_config
from mffseg_ros.training.config import DEFAULTS, ConfigError, load_config, resolve_specs
from mffseg_ros.training.loader import training_samples
from mffseg_ros.training.logs import read_csv
from mffseg_ros.training.trainer import Trainer
from mffseg_ros.training.validation import iou_summary

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures('one_thread')  # conftest.py: one torch thread


@pytest.fixture(scope='module')
def tiny_set(tmp_path_factory):
    """Six 72x96 frames with one bright bar: shaft/wrist/claspers rows, all of type 2; plus the mapping."""
    root = tmp_path_factory.mktemp('tiny')
    rng = np.random.default_rng(0)
    for i in range(6):
        img = rng.integers(0, 60, (72, 96, 3), dtype=np.uint8)
        mask = np.zeros((72, 96), np.uint8)
        x = int(rng.integers(5, 50))
        img[20:50, x:x + 30] = 200
        mask[20:50, x:x + 30] = 1
        mask[28:34, x:x + 30] = 2
        mask[20:28, x:x + 30] = 3
        cv2.imwrite(str(root / f'f{i}.png'), img)
        cv2.imwrite(str(root / f'f{i}_mask.png'), mask)
    (root / 'map.yaml').write_text('parts: {0: 0, 1: 1, 2: 2, 3: 3}\ntype: {0: 0, 1: 2, 2: 2, 3: 2}\n')
    return f'folder:{root}?mapping={root / "map.yaml"}'


def tiny_config(spec, **recipe):
    cfg = copy.deepcopy(DEFAULTS)
    cfg['data']['train'] = [spec]
    cfg['train_size'] = [64, 64]
    cfg['workers'] = 0
    cfg['recipe'].update({'iters': 3, 'batch_size': 2, **recipe})
    return cfg


def test_task_loss_values_by_hand():
    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]], [[0.0, 0.0, -1.0]]]])  # (1, 3, 1, 3)
    target = torch.tensor([[[1, 255, 255]]])
    binary = torch.tensor([[[1, 1, 255]]])
    p = torch.softmax(logits[0, :, 0], dim=0)  # (3 classes, 3 pixels)
    expected = (-torch.log(p[1, 0]) - torch.log(1 - p[0, 1])) / 2  # CE at px0, binary BCE at px1, px2 ignored
    assert torch.allclose(losses.task_loss(logits, target, binary), expected)
    weighted = (-torch.log(p[1, 0]) - 3 * torch.log(1 - p[0, 1])) / 2  # binary-only pixels count 3x
    assert torch.allclose(losses.task_loss(logits, target, binary, binary_weight=3.0), weighted)
    # class weights scale a labelled pixel's cross-entropy by its class's weight, not the binary term
    by_class = (-2 * torch.log(p[1, 0]) - torch.log(1 - p[0, 1])) / 2
    assert torch.allclose(losses.task_loss(logits, target, binary, class_weights=[1.0, 2.0, 5.0]), by_class)
    assert torch.allclose(losses.segmentation_loss({'parts': logits}, {'parts': target, 'binary': binary},
                                                   class_weights={'parts': [1.0, 2.0, 5.0]}), by_class)
    assert losses.task_loss(logits, torch.full((1, 1, 3), 255), None) == 0  # nothing supervised
    # aux ground truth: nearest downsampling of the label map
    small = losses.downsample_labels(torch.arange(16).reshape(1, 4, 4), (2, 2))
    assert small.tolist() == [[[0, 2], [8, 10]]]
    # discriminator targets: one-hot where labelled, the prediction where not
    gt = losses.ground_truth_probs({'parts': logits}, {'parts': target})
    assert gt[0, :, 0, 0].tolist() == [0, 1, 0]
    assert torch.allclose(gt[0, :, 0, 1], p[:, 1])


@pytest.mark.parametrize('aux,adversarial', [(False, False), (True, False), (False, True), (True, True)])
def test_one_step_lowers_the_loss(tiny_set, tmp_path, aux, adversarial):
    cfg = tiny_config(tiny_set, aux=aux, adversarial=adversarial)
    trainer = Trainer(cfg, tmp_path, device='cpu')
    samples = training_samples(cfg, resolve_specs([tiny_set], '.'))
    batch = torch.utils.data.default_collate([samples[0], samples[1]])
    disc_before = copy.deepcopy(trainer.disc)
    with torch.no_grad():
        before, terms, main, targets = trainer.seg_losses(batch, disc=disc_before)
        d_before = trainer.disc_loss(main, targets)
    assert set(terms) == {'main'} | ({'aux'} if aux else set()) | ({'adv'} if adversarial else set())
    row = trainer.step(batch)
    assert math.isclose(row['loss'], float(before), rel_tol=1e-4)
    with torch.no_grad():
        after = trainer.seg_losses(batch, disc=disc_before)[0]
        d_after = trainer.disc_loss(main, targets)
    assert float(after) < float(before)
    if adversarial:  # the discriminator's own step lowers its loss on the same inputs
        assert float(d_after) < float(d_before)
    else:
        assert 'disc' not in row and float(d_after) == float(d_before)


def test_train_cli_writes_weights_csv_png_and_resume_is_exact(tiny_set, tmp_path, capsys):
    common = ['train', '--data', tiny_set, '--iters', '3', '--batch-size', '2', '--train-size', '64', '64',
              '--workers', '0', '--set', 'log_every=1', '--set', 'checkpoint_every=100']
    straight = tmp_path / 'straight'
    assert main(common + ['--out', str(straight), '--val', tiny_set]) == 0
    weights = straight / 'weights.safetensors'
    meta = read_metadata(weights)
    assert meta.tasks == {'parts': 4, 'type': 8}
    assert meta.class_names['parts'] == ['background', 'shaft', 'wrist', 'claspers']
    assert meta.preprocessing.train_size == (64, 64) and meta.preprocessing.mean[0] == pytest.approx(0.485)
    assert meta.recipe['lr'] == 1e-3 and meta.recipe['aux_weight'] == 0.4
    assert meta.provenance.iterations == 3 and meta.provenance.git_revision != 'unknown'
    assert 0 < meta.provenance.hours < 1 and meta.provenance.encoder_init == 'random'
    assert meta.provenance.train_data[0]['kind'] == 'folder'
    val = meta.metrics['validation']
    assert set(val) == {'parts', 'type', 'parts_as_binary', 'type_as_binary'}
    assert set(val['type']['iou']) == {'background', 'prograsp_forceps'}  # only classes present
    assert all(0 <= v['miou'] <= 1 for v in val.values())
    rows = read_csv(straight / 'train_log.csv')
    assert [int(r['iteration']) for r in rows] == [1, 2, 3]
    assert (straight / 'train_curves.png').read_bytes()[:4] == b'\x89PNG'
    assert (straight / 'config.yaml').is_file() and (straight / 'run.json').is_file()
    model, _ = load_weights(weights)

    # An interrupted run (stopped at iteration 2) resumed from its checkpoint ends bit-identical.
    resumed = tmp_path / 'resumed'
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = build_config(parser.parse_args(common[1:]))
    assert Trainer(cfg, resumed, device='cpu').run(until=2) is None
    assert not (resumed / 'weights.safetensors').exists()
    assert main(common + ['--out', str(resumed)]) == 2  # refuses to overwrite without --resume
    assert 'pass --resume' in capsys.readouterr().err
    assert main(common + ['--out', str(resumed), '--resume']) == 0
    again, _ = load_weights(resumed / 'weights.safetensors')
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert [int(r['iteration']) for r in read_csv(resumed / 'train_log.csv')] == [1, 2, 3]


def test_resume_errors_name_the_file(tiny_set, tmp_path):
    cfg = tiny_config(tiny_set)
    with pytest.raises(CheckpointError, match=r'state\.json: no complete checkpoint'):
        Trainer(cfg, tmp_path, device='cpu', resume=True)
    Trainer(cfg, tmp_path, device='cpu').checkpoint()
    other = copy.deepcopy(cfg)
    other['tasks'] = {'binary': 2}
    with pytest.raises(CheckpointError, match=r'model\.safetensors: does not match'):
        Trainer(other, tmp_path, device='cpu', resume=True)
    # a checkpoint of the first parameter layout (a run started before the layout changed) resumes
    from safetensors.torch import load_file, save_file
    from test_model import old_layout
    model_file = tmp_path / 'checkpoint' / 'model.safetensors'
    saved = load_file(str(model_file))
    save_file(old_layout(saved), str(model_file))
    resumed = Trainer(cfg, tmp_path, device='cpu', resume=True)
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    (tmp_path / 'checkpoint' / 'optimizer.safetensors').write_bytes(b'not a safetensors file')
    with pytest.raises(CheckpointError, match=r'optimizer\.safetensors: unreadable'):
        Trainer(cfg, tmp_path, device='cpu', resume=True)


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_distributed_path_in_one_process(tiny_set, tmp_path, monkeypatch):
    """What torchrun sets up, with one process: DDP-wrapped networks, DistributedSampler, all-reduced logs."""
    for key, value in {'RANK': '0', 'LOCAL_RANK': '0', 'WORLD_SIZE': '1', 'MASTER_ADDR': '127.0.0.1',
                       'MASTER_PORT': str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    trainer = Trainer(tiny_config(tiny_set, iters=2), tmp_path, device='cpu')
    assert isinstance(trainer.net, torch.nn.parallel.DistributedDataParallel)
    assert isinstance(trainer.disc_net, torch.nn.parallel.DistributedDataParallel)
    assert trainer.run() == tmp_path / 'weights.safetensors'
    assert not torch.distributed.is_initialized()  # the group is closed after the run
    assert read_metadata(tmp_path / 'weights.safetensors').recipe['world_size'] == 1
    assert len(read_csv(tmp_path / 'train_log.csv')) == 2


@pytest.mark.skipif(os.environ.get('MFFSEG_TEST_TORCHRUN') != '1',
                    reason='two torchrun processes take ~20 s: set MFFSEG_TEST_TORCHRUN=1')
def test_torchrun_two_processes(tiny_set, tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={_free_port()}',
           '-m', 'mffseg_ros.cli', 'train', '--out', str(tmp_path / 'ddp'), '--data', tiny_set, '--iters', '2',
           '--batch-size', '1', '--train-size', '64', '64', '--workers', '0']
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_metadata(tmp_path / 'ddp' / 'weights.safetensors').recipe['world_size'] == 2


def test_iou_summary_by_hand():
    cm = torch.tensor([[8, 2, 0], [1, 3, 0], [0, 0, 0]])  # rows: truth, columns: prediction
    summary = iou_summary(cm, ['a', 'b', 'c'])
    assert summary['iou'] == {'a': pytest.approx(8 / 11), 'b': pytest.approx(3 / 6)}  # c absent: not scored
    assert summary['miou'] == pytest.approx((8 / 11 + 0.5) / 2)
    assert iou_summary(torch.zeros(2, 2, dtype=torch.int64), ['a', 'b']) is None


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(['train', '--config', str(tmp_path / 'nope.yaml')]) == 2
    err = capsys.readouterr().err
    assert 'nope.yaml' in err and 'Traceback' not in err
    assert main(['train', '--data', f'endovis:{tmp_path}', '--out', str(tmp_path / 'r'), '--iters', '1']) == 2
    assert 'instrument_dataset_N' in capsys.readouterr().err
    assert main(['train', '--data', 'synth:?frames=2', '--train-size', '60', '64']) == 2
    assert 'multiples of 32' in capsys.readouterr().err
    assert main(['train', '--data', 'synth:?frames=2', '--set', 'recipe.lr=fast']) == 2
    assert 'recipe.lr: expected a number' in capsys.readouterr().err
    assert main(['train', '--data', 'synth:?frames=2', '--set', 'tasks={parts: 5}']) == 2
    assert 'class counts' in capsys.readouterr().err


def test_committed_configs_load():
    configs = sorted((REPO / 'configs').glob('*.yaml'))
    assert any(c.name == 'default_multitask.yaml' for c in configs)
    for path in configs:
        cfg = load_config(path)
        assert cfg['recipe']['lr'] == 1e-3 and cfg['recipe']['disc_lr'] == 1.5e-4
        assert cfg['recipe']['poly_power'] == 0.9 and cfg['recipe']['weight_decay'] == 5e-4
        if path.name.startswith('endovis17_'):  # paper-faithful: one task, the one in the name
            assert list(cfg['tasks']) == [path.name.split('_')[1]]
            assert cfg['recipe']['aux'] and cfg['recipe']['adversarial']
    assert load_config(REPO / 'configs' / 'default_multitask.yaml')['tasks'] == {'parts': 4, 'type': 8}
    with pytest.raises(ConfigError, match='unknown key'):
        load_config(configs[0], overrides=['recipe.itres=5'])
    assert load_config(configs[0], overrides=['recipe.iters=5'])['recipe']['iters'] == 5
    weighted = load_config(REPO / 'configs' / 'default_multitask.yaml',
                           overrides=['recipe.class_weights={parts: [1, 1, 1.5, 2]}'])
    assert weighted['recipe']['class_weights'] == {'parts': [1.0, 1.0, 1.5, 2.0]}
    # YAML 1.1 reads 2e-4 as text; numbers are read as people write them, anywhere in the config
    cfg = load_config(configs[0], overrides=['recipe.lr=2e-4', 'augment.brightness=2e-1', 'recipe.iters=1e3'])
    assert cfg['recipe']['lr'] == pytest.approx(2e-4) and cfg['augment']['brightness'] == pytest.approx(0.2)
    assert cfg['recipe']['iters'] == 1000 and isinstance(cfg['recipe']['iters'], int)
    for bad, message in (('recipe.lr=fast', 'expected a number'), ('recipe.lr=true', 'expected a number'),
                         ('seed=1.9', 'whole number'), ('recipe.iters=.inf', 'whole number'),
                         ('recipe.class_weights={parts: [1, 2]}', 'expected 4 weights'),
                         ('recipe.class_weights={binary: [1, 2]}', 'not trained'),
                         ('recipe.class_weights={parts: [1, 1, 0, 2]}', 'must be positive'),
                         ('recipe.class_weights=[1, 2]', 'expected {task')):
        with pytest.raises(ConfigError, match=message):
            load_config(configs[0], overrides=[bad])


def test_bad_validation_spec_fails_before_training(tmp_path, capsys):
    from mffseg_ros.cli import main
    out = tmp_path / 'run'
    argv = ['train', '--out', str(out), '--data', 'synth:?frames=2&size=64x64', '--train-size', '64', '64',
            '--iters', '1', '--batch-size', '1', '--workers', '0']
    assert main(argv + ['--val', 'synth:?frames=abc']) == 2
    assert 'bad option value' in capsys.readouterr().err
    assert not (out / 'train_log.csv').exists()  # no iteration ran
    assert main(argv + ['--set', 'recipe.iters=[1']) == 2
    err = capsys.readouterr().err.strip()
    assert 'not valid YAML' in err and len(err.splitlines()) == 1


def test_non_finite_loss_stops_before_the_weights_move(tiny_set, tmp_path):
    cfg = tiny_config(tiny_set)
    trainer = Trainer(cfg, tmp_path, device='cpu')
    samples = training_samples(cfg, resolve_specs([tiny_set], '.'))
    batch = torch.utils.data.default_collate([samples[0], samples[1]])
    batch['image'][0, 0, 0, 0] = float('nan')
    before = copy.deepcopy(trainer.model.state_dict())
    with pytest.raises(MffsegError, match='loss became nan at iteration 0'):
        trainer.step(batch)
    for name, tensor in trainer.model.state_dict().items():
        if not name.endswith(('running_mean', 'running_var', 'num_batches_tracked')):  # BN stats move in forward
            assert torch.equal(tensor, before[name]), name
    assert trainer.iteration == 0 and not trainer.opt.state  # Adam never stepped


def test_stopped_run_closes_the_process_group_and_writes_readable_files(tiny_set, tmp_path, monkeypatch):
    for key, value in {'RANK': '0', 'LOCAL_RANK': '0', 'WORLD_SIZE': '1', 'MASTER_ADDR': '127.0.0.1',
                       'MASTER_PORT': str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    trainer = Trainer(tiny_config(tiny_set, iters=2), tmp_path, device='cpu')
    assert torch.distributed.is_initialized()
    assert trainer.run(until=1) is None
    assert not torch.distributed.is_initialized()
    files = sorted((tmp_path / 'checkpoint').iterdir())
    assert {f.name for f in files} >= {'model.safetensors', 'optimizer.safetensors', 'state.json'}
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in files), [(f.name, oct(f.stat().st_mode)) for f in files]


def test_encoder_weights_start_the_encoder(tiny_set, tmp_path, caplog):
    from safetensors.torch import save_file
    from test_model import torchvision_resnet18_state
    state = torchvision_resnet18_state()
    path = tmp_path / 'resnet18.safetensors'
    save_file(state, str(path))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(['--data', tiny_set, '--iters', '1', '--batch-size', '2', '--train-size', '64', '64',
                              '--workers', '0', '--encoder-weights', str(path)])
    cfg = build_config(args)
    assert cfg['encoder_weights'] == str(path)
    with caplog.at_level('INFO'):
        trainer = Trainer(cfg, tmp_path / 'run', device='cpu')
    assert 'fc.weight' in caplog.text  # the unused classifier is named in the log
    for name, tensor in trainer.model.encoder.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    trainer.run()
    meta = read_metadata(tmp_path / 'run' / 'weights.safetensors')
    assert meta.provenance.encoder_init == 'resnet18.safetensors' and meta.provenance.iterations == 1
    paper = build_config(parser.parse_args(['--config', str(REPO / 'configs' / 'endovis17_binary_paper.yaml'),
                                            '--encoder-weights', str(path)]))
    assert paper['encoder_weights'] == str(path) and paper['tasks'] == {'binary': 2}
    with pytest.raises(ConfigError, match='encoder_weights must be a file path'):
        load_config(overrides=['encoder_weights=[1]', 'data.train=[x]'])
    args.encoder_weights = str(tmp_path / 'missing.pth')
    with pytest.raises(MffsegError, match='missing.pth: encoder weights file not found'):
        Trainer(build_config(args), tmp_path / 'run2', device='cpu')


def test_init_weights_continue_the_history_and_stop_file_writes_weights(tiny_set, tmp_path, capsys):
    """A run from earlier weights starts from their exact tensors and records both runs' iterations and
    hours; touching <out>/STOP ends a run early with its weights; crops of larger frames train."""
    common = ['train', '--data', tiny_set, '--batch-size', '2', '--train-size', '64', '64', '--workers', '0',
              '--set', 'checkpoint_every=100']
    first = tmp_path / 'first'
    assert main(common + ['--out', str(first), '--iters', '2']) == 0
    start, _ = load_weights(first / 'weights.safetensors')

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(common[1:] + ['--iters', '3', '--init-weights', str(first / 'weights.safetensors'),
                                           '--set', 'crop_size=[32, 64]', '--set', 'augment.scale=[0.5, 1.5]'])
    cfg = build_config(args)
    trainer = Trainer(cfg, tmp_path / 'second', device='cpu')
    for (name, a), b in zip(start.state_dict().items(), trainer.model.state_dict().values()):
        assert torch.equal(a, b), name
    (tmp_path / 'second').mkdir(exist_ok=True)
    original_step = trainer.step

    def step_then_stop(batch):  # after the first step, ask the run to stop
        assert batch['image'].shape[-2:] == (32, 64)  # crops, not whole frames
        row = original_step(batch)
        (tmp_path / 'second' / 'STOP').touch()
        return row
    trainer.step = step_then_stop
    path = trainer.run()
    meta = read_metadata(path)
    assert tuple(meta.preprocessing.train_size) == (64, 64)
    extra = meta.extra
    assert extra['train_scales'] == [0.5, 1.5] and meta.recipe['crop_size'] == [32, 64]
    runs = extra['training_history']
    assert [r['iterations'] for r in runs] == [2, 1] and extra['total_iterations'] == 3
    assert meta.provenance.iterations == 3 and meta.provenance.hours == pytest.approx(extra['total_hours'])
    assert all(r['hours'] > 0 for r in runs) and extra['total_hours'] == pytest.approx(sum(r['hours'] for r in runs))
    assert extra['runs_without_hours'] == 0

    # weights from before histories existed count as one run of unknown hours
    from mffseg_ros.model.weights import WeightsMeta
    from mffseg_ros.training.history import history_of, totals
    old = history_of(WeightsMeta(tasks={'parts': 4}, recipe={'iters': 800, 'config_name': 'x'},
                                 metrics={'iterations': 800}))
    assert totals(old + runs) == (803, pytest.approx(sum(r['hours'] for r in runs)), 1)
    # a file that is not there, or a model with other heads, is a one-line error before training
    assert main(common + ['--out', str(tmp_path / 'x'), '--init-weights', str(tmp_path / 'none.safetensors')]) == 2
    assert 'init_weights' in capsys.readouterr().err
    assert main(common + ['--out', str(tmp_path / 'y'), '--iters', '1', '--set', 'tasks={parts: 4}',
                          '--init-weights', str(first / 'weights.safetensors')]) == 2
    assert 'init weights have tasks' in capsys.readouterr().err
