"""Weights as safetensors with metadata (architecture, heads, class names, normalisation, recipe,
metrics). Never pickles: a weights file can be read without executing anything."""
import json
from collections import OrderedDict
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mffseg_ros.errors import WeightsError
from mffseg_ros.model.classes import TASK_CLASSES

FORMAT = 'mffseg/1'
METADATA_KEY = 'mffseg'
# Per-channel mean subtraction (paper) with the usual ImageNet statistics, RGB in 0..1 units.
DEFAULT_NORMALIZATION = {'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225]}


def default_metadata(model, **extra):
    meta = {
        'format': FORMAT,
        'architecture': 'mffnet',
        'tasks': dict(model.tasks),
        'class_names': {t: list(TASK_CLASSES.get(t, [f'class_{i}' for i in range(c)]))
                        for t, c in model.tasks.items()},
        'normalization': DEFAULT_NORMALIZATION,
        'input_scale': 0.5,
    }
    meta.update(extra)
    return meta


def save_weights(path, model, metadata=None, *, dtype=None):
    """Writes `model`'s state dict (optionally cast to `dtype`, e.g. torch.float16) and metadata."""
    meta = default_metadata(model)
    meta.update(metadata or {})
    meta['tasks'] = dict(model.tasks)  # the file's architecture is the model's, whatever was passed
    tensors = OrderedDict()
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    tmp.replace(path)  # atomic: a crash never leaves a half-written weights file
    return path


def _open(path):
    path = Path(path)
    if not path.exists():
        raise WeightsError(f'{path}: weights file not found')
    if not path.is_file():
        raise WeightsError(f'{path}: not a file')
    try:
        return safe_open(str(path), framework='pt', device='cpu')
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f'{path}: not a readable safetensors file ({e})') from None


def read_metadata(path):
    """The metadata dict of a weights file, validated."""
    with _open(path) as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    if raw is None:
        raise WeightsError(f'{path}: safetensors file has no "{METADATA_KEY}" metadata (not an mffseg model)')
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise WeightsError(f'{path}: corrupt metadata ({e})') from None
    if meta.get('architecture') != 'mffnet' or not isinstance(meta.get('tasks'), dict):
        raise WeightsError(f'{path}: unknown architecture {meta.get("architecture")!r} or missing tasks')
    return meta


def load_weights(path, *, device='cpu'):
    """(MFFNet in eval mode with float32 weights, metadata). Raises WeightsError with path and reason."""
    from mffseg_ros.model.mffnet import MFFNet

    meta = read_metadata(path)
    try:
        model = MFFNet(tasks=meta['tasks'])
    except (ValueError, TypeError) as e:
        raise WeightsError(f'{path}: bad tasks in metadata ({e})') from None
    with _open(path) as f:
        try:
            state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f'{path}: corrupt tensor data ({e})') from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(f'{path}: tensors do not match MFFNet{dict(model.tasks)}: '
                           f'missing {missing[:3]}, unexpected {unexpected[:3]}')
    for k, t in state.items():
        if t.shape != expected[k].shape:
            raise WeightsError(f'{path}: tensor {k} has shape {tuple(t.shape)}, '
                               f'expected {tuple(expected[k].shape)}')
        state[k] = t.to(expected[k].dtype)
    model.load_state_dict(state)
    return model.to(device).eval(), meta
