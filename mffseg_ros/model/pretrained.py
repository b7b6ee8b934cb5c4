"""ImageNet ResNet-18 weights (torchvision or timm) onto the MFF encoder, for `mffseg train --encoder-weights`.

Both libraries name ResNet-18 parameters alike (conv1, bn1, layer1..layer4, downsample.0/1, fc), and so
does `ResNet18Encoder`, so the file's tensors load by name; the classifier (fc) is not used. The
auxiliary branch runs the same encoder modules, so it starts from the same weights.
Reads safetensors, or a torchvision `.pth` through `torch.load(weights_only=True)`, which refuses
anything but tensors and plain containers: no pickled code runs.
"""
import logging
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mffseg_ros.errors import WeightsError

log = logging.getLogger(__name__)
PREFIXES = ('module.', 'model.', 'encoder.', 'backbone.')  # DDP, timm/Lightning wrappers, smp encoders
WRAPPER_KEYS = ('state_dict', 'model')  # checkpoints that hold the state dict under one of these


def read_state_dict(path):
    """{name: tensor} from a safetensors file or a weights-only torch file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f'{path}: encoder weights file not found')
    if path.suffix == '.safetensors':
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f'{path}: not a readable safetensors file ({e})') from None
    try:
        state = torch.load(str(path), map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise WeightsError(f'{path}: not a weights-only torch file ({" ".join(str(e).split())[:200]})') from None
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsError(f'{path}: expected a state dict of tensors')
    return state


def _strip_prefix(name):
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def load_encoder_weights(model, path):
    """Copies the ResNet-18 tensors of `path` into `model.encoder`. Returns (loaded, missing, unexpected)
    key lists; missing/unexpected are logged. Shape mismatches and files with no encoder tensor at all
    raise WeightsError."""
    state = {_strip_prefix(k): v for k, v in read_state_dict(path).items()}
    expected = model.encoder.state_dict()
    loaded = sorted(k for k in state if k in expected)
    if not loaded:
        raise WeightsError(f'{path}: no ResNet-18 encoder tensors (expected torchvision names such as '
                           f'conv1.weight, layer1.0.conv1.weight; found {sorted(state)[:3]})')
    for k in loaded:
        if state[k].shape != expected[k].shape:
            raise WeightsError(f'{path}: {k} has shape {tuple(state[k].shape)}, the encoder needs '
                               f'{tuple(expected[k].shape)} (not a ResNet-18?)')
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(state) - set(expected))
    model.encoder.load_state_dict({k: state[k] for k in loaded}, strict=False)
    log.info('encoder weights %s: %d tensors loaded', path, len(loaded))
    if missing:
        log.warning('encoder weights %s: %d encoder tensors missing (left at random init): %s',
                    path, len(missing), ', '.join(missing[:8]))
    if unexpected:
        log.info('encoder weights %s: %d tensors not used (e.g. the classifier): %s',
                 path, len(unexpected), ', '.join(unexpected[:8]))
    return loaded, missing, unexpected
