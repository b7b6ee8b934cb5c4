"""Checkpoints without pickles: tensors (model, discriminator, Adam moments, RNG) in safetensors files,
counters and hyper-parameters in `state.json`, written last so a checkpoint without it is incomplete."""
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mffseg_ros.errors import MffsegError
from mffseg_ros.model.weights import upgrade_state_dict, write_safetensors

STATE_FILE = 'state.json'


class CheckpointError(MffsegError):
    """A checkpoint folder is missing, incomplete or does not match the run's model."""


def _load(path):
    if not path.is_file():
        raise CheckpointError(f'{path}: checkpoint file missing')
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f'{path}: unreadable checkpoint file ({e})') from None


def optimizer_to_tensors(optimizer):
    """Adam's per-parameter state as flat tensors + its JSON-able rest (param groups, scalar state)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd['state'].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f'{pid}.{key}'] = value
            else:
                scalars[f'{pid}.{key}'] = value
    return tensors, {'param_groups': sd['param_groups'], 'scalars': scalars}


def optimizer_from_tensors(optimizer, tensors, info):
    state = {}
    for name, value in list(tensors.items()) + list(info['scalars'].items()):
        pid, key = name.split('.', 1)
        state.setdefault(int(pid), {})[key] = value
    groups = [dict(g, betas=tuple(g['betas'])) if 'betas' in g else g for g in info['param_groups']]
    optimizer.load_state_dict({'state': state, 'param_groups': groups})


def save_checkpoint(folder, *, model, discriminator, optimizer, disc_optimizer, counters, scalers=None):
    """Writes the checkpoint into `folder` (created); `counters` is a JSON-able dict (iteration...)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATE_FILE).unlink(missing_ok=True)  # incomplete until state.json is back
    write_safetensors(model.state_dict(), folder / 'model.safetensors')
    write_safetensors(discriminator.state_dict(), folder / 'discriminator.safetensors')
    opt_tensors, opt_info = optimizer_to_tensors(optimizer)
    write_safetensors(opt_tensors or {'_empty': torch.zeros(0)}, folder / 'optimizer.safetensors')
    dopt_tensors, dopt_info = optimizer_to_tensors(disc_optimizer)
    write_safetensors(dopt_tensors or {'_empty': torch.zeros(0)}, folder / 'disc_optimizer.safetensors')
    rng = {'torch_cpu': torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f'torch_cuda{i}'] = s
    write_safetensors(rng, folder / 'rng.safetensors')
    state = {'counters': counters, 'optimizer': opt_info, 'disc_optimizer': dopt_info,
             'scalers': {k: s.state_dict() for k, s in (scalers or {}).items()}}
    tmp = folder / (STATE_FILE + '.tmp')
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(folder / STATE_FILE)


def load_checkpoint(folder, *, model, discriminator, optimizer, disc_optimizer, scalers=None):
    """Restores everything `save_checkpoint` wrote; returns the counters."""
    folder = Path(folder)
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(f'{state_path}: no complete checkpoint to resume from')
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f'{state_path}: unreadable ({e})') from None
    for module, name in ((model, 'model'), (discriminator, 'discriminator')):
        tensors = _load(folder / f'{name}.safetensors')
        if module is model:  # checkpoints of the first model layout resume too
            tensors = upgrade_state_dict(tensors)
        try:
            module.load_state_dict(tensors)
        except RuntimeError as e:
            raise CheckpointError(f'{folder / name}.safetensors: does not match the configured model '
                                  f'({str(e).splitlines()[0]})') from None
    for opt, name in ((optimizer, 'optimizer'), (disc_optimizer, 'disc_optimizer')):
        tensors = {k: v for k, v in _load(folder / f'{name}.safetensors').items() if k != '_empty'}
        optimizer_from_tensors(opt, tensors, state[name])
    rng = _load(folder / 'rng.safetensors')
    torch.set_rng_state(rng['torch_cpu'])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(rng) if k.startswith('torch_cuda')]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    for key, scaler in (scalers or {}).items():
        if key in state['scalers'] and state['scalers'][key]:
            scaler.load_state_dict(state['scalers'][key])
    return state['counters']
