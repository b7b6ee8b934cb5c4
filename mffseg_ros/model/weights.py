"""Weights as safetensors with typed metadata (`WeightsMeta`: tasks, class names, preprocessing, training
recipe, metrics, provenance). Never pickles: a weights file can be read without executing anything.

This module is the one place that reads and writes weights files and their metadata, including files
of the first format ('mffseg/1': flat metadata, parameter names of the first model layout), which load
into today's layout through `OLD_KEY_RULES`.
"""
import json
import os
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mffseg_ros.errors import WeightsError
from mffseg_ros.model.classes import TASK_CLASSES
from mffseg_ros.model.mffnet import MFFNet

FORMAT = 'mffseg/2'
FORMATS = ('mffseg/1', FORMAT)
METADATA_KEY = 'mffseg'
FILE_MODE = 0o644  # like every other output; safetensors itself creates files 0600
# Per-channel mean subtraction (paper) with the usual ImageNet statistics, RGB in 0..1 units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_NORMALIZATION = {'mean': list(IMAGENET_MEAN), 'std': list(IMAGENET_STD)}

# 'mffseg/1' parameter names -> today's (encoder with torchvision names, fusion, decoder.blocks, heads).
OLD_KEY_RULES = (
    (r'^encoder\.stem\.0\.', 'encoder.conv1.'),
    (r'^encoder\.stem\.1\.', 'encoder.bn1.'),
    (r'^encoder\.stage(\d)\.(\d+)\.conv(\d)\.0\.', r'encoder.layer\1.\2.conv\3.'),
    (r'^encoder\.stage(\d)\.(\d+)\.conv(\d)\.1\.', r'encoder.layer\1.\2.bn\3.'),
    (r'^encoder\.stage(\d)\.', r'encoder.layer\1.'),  # downsample.0/.1 already had torchvision's names
    (r'^mff\.', 'fusion.'),
    (r'^decoder([1-4])\.', lambda m: f'decoder.blocks.{4 - int(m.group(1))}.'),
    (r'^class_blocks\.', 'heads.'),
)


def upgrade_state_dict(state):
    """A state dict with 'mffseg/1' parameter names renamed to today's (others pass unchanged)."""
    out = OrderedDict()
    for key, value in state.items():
        for pattern, repl in OLD_KEY_RULES:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        out[key] = value
    return out


@dataclass(frozen=True)
class Preprocessing:
    """What a frame goes through before the network, travelling with the weights (like torchvision's
    `Weights.transforms()`): resize to about `train_size` (or by `input_scale` when the file has no
    training size), then per-channel normalisation with `mean`/`std` (RGB, 0..1 units)."""
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    train_size: tuple | None = None   # (H, W) of the training frames
    input_scale: float = 0.5          # frame scale for files without train_size

    def __post_init__(self):
        for name in ('mean', 'std'):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 3 or (name == 'std' and min(values) <= 0):
                raise ValueError(f'preprocessing {name} must be 3 numbers (std > 0), got {values}')
            object.__setattr__(self, name, values)
        if self.train_size is not None:
            object.__setattr__(self, 'train_size', tuple(int(v) for v in self.train_size))
        object.__setattr__(self, 'input_scale', float(self.input_scale))

    @property
    def normalization(self):
        return {'mean': list(self.mean), 'std': list(self.std)}

    def mean_std(self, device=None, scale=255.0):
        """(mean, std) as (1, 3, 1, 1) float32 tensors in units of `scale` (255: uint8 pixel values)."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * scale
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * scale
        return mean, std

    def normalize(self, x):
        """(B, 3, H, W) float tensor of 0..255 RGB values -> the network's input."""
        mean, std = self.mean_std(x.device)
        return (x - mean) / std


@dataclass
class Provenance:
    """Where the weights came from: source revision, training length, data, encoder initialisation."""
    git_revision: str = 'unknown'
    iterations: int | None = None
    hours: float | None = None
    train_data: list = field(default_factory=list)
    val_data: list = field(default_factory=list)
    encoder_init: str | None = None   # 'random', or the ImageNet weights file the encoder started from


@dataclass
class WeightsMeta:
    """The metadata of a weights file. `tasks` is the architecture ({task: class count}, in head order)."""
    tasks: dict
    class_names: dict = field(default_factory=dict)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance)
    stored_dtype: str = 'float32'
    random_init: bool = False
    extra: dict = field(default_factory=dict)  # keys of other tools, kept as they are
    version: str = FORMAT
    architecture: str = 'mffnet'

    @classmethod
    def for_model(cls, model, **fields):
        tasks = dict(model.tasks)
        names = {t: list(TASK_CLASSES.get(t, [f'class_{i}' for i in range(c)])) for t, c in tasks.items()}
        return cls(tasks=tasks, class_names=names, **fields)

    def names(self, task):
        return list(self.class_names.get(task) or TASK_CLASSES.get(task, ()))

    def to_dict(self):
        out = {'format': FORMAT, 'architecture': self.architecture, 'tasks': dict(self.tasks),
               'class_names': self.class_names, 'preprocessing': _plain(asdict(self.preprocessing)),
               'recipe': self.recipe, 'metrics': self.metrics, 'provenance': _plain(asdict(self.provenance)),
               'stored_dtype': self.stored_dtype}
        if self.random_init:
            out['random_init'] = True
        return dict(self.extra, **out)

    @classmethod
    def from_dict(cls, meta, where='metadata'):
        """From the stored JSON of either format; fields a file lacks get their defaults."""
        if not isinstance(meta, dict):
            raise WeightsError(f'{where}: metadata is not a JSON object')
        meta = dict(meta)
        version = meta.pop('format', 'mffseg/1')
        if version not in FORMATS:
            raise WeightsError(f'{where}: unknown weights format {version!r} (this version reads {FORMATS})')
        if meta.get('architecture') != 'mffnet' or not isinstance(meta.get('tasks'), dict):
            raise WeightsError(f'{where}: unknown architecture {meta.get("architecture")!r} or missing tasks')
        meta.pop('architecture')
        try:
            if version == 'mffseg/1':
                meta = _upgrade_metadata(meta)
            return cls(tasks=meta.pop('tasks'), class_names=dict(meta.pop('class_names', None) or {}),
                       preprocessing=Preprocessing(**(meta.pop('preprocessing', None) or {})),
                       recipe=meta.pop('recipe', None) or {}, metrics=meta.pop('metrics', None) or {},
                       provenance=Provenance(**(meta.pop('provenance', None) or {})),
                       stored_dtype=str(meta.pop('stored_dtype', 'float32')),
                       random_init=bool(meta.pop('random_init', False)), extra=meta, version=version)
        except (TypeError, ValueError, KeyError) as e:
            raise WeightsError(f'{where}: bad metadata ({type(e).__name__}: {e})') from None


def _plain(d):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _upgrade_metadata(meta):
    """'mffseg/1' kept preprocessing and provenance as top-level keys and in recipe/metrics."""
    norm = meta.pop('normalization', None) or DEFAULT_NORMALIZATION
    pre = {'mean': norm['mean'], 'std': norm['std'], 'train_size': meta.pop('train_size', None)}
    scale = meta.pop('input_scale', None)
    if scale is not None:
        pre['input_scale'] = scale
    meta['preprocessing'] = pre
    recipe = meta.get('recipe') if isinstance(meta.get('recipe'), dict) else {}
    metrics = meta.get('metrics') if isinstance(meta.get('metrics'), dict) else {}
    # Totals over every run, where a file recorded them (training_history stays as an extra key).
    meta['provenance'] = {'git_revision': meta.pop('git_revision', 'unknown'),
                          'iterations': meta.get('total_iterations', metrics.get('iterations')),
                          'hours': meta.get('total_hours'),
                          'train_data': recipe.get('train_data') or [], 'val_data': recipe.get('val_data') or []}
    return meta


def default_metadata(model, **fields):
    """Metadata for a model that has no file (e.g. random initialisation, tests)."""
    return WeightsMeta.for_model(model, **fields)


def as_weights_meta(model, metadata=None, where='metadata'):
    """`metadata` as a WeightsMeta for `model`: a WeightsMeta as it is; a dict of stored fields (the flat
    'mffseg/1' keys such as input_scale or train_size are read as such) over the model's defaults;
    None: the defaults."""
    if metadata is None:
        return default_metadata(model)
    if isinstance(metadata, dict):
        base = {'format': 'mffseg/1', 'architecture': 'mffnet', 'tasks': dict(model.tasks)}
        return WeightsMeta.from_dict(dict(base, **metadata), where=where)
    if not isinstance(metadata, WeightsMeta):
        raise TypeError(f'{where}: expected a WeightsMeta or a dict, got {type(metadata).__name__}')
    return metadata


def write_safetensors(tensors, path, metadata=None):
    """Writes `tensors` atomically (a crash never leaves a half-written file) with mode 0644."""
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp')
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.chmod(tmp, FILE_MODE)
    tmp.replace(path)
    return path


def save_weights(path, model, metadata=None, *, dtype=None):
    """Writes `model`'s state dict (optionally cast to `dtype`, e.g. torch.float16) and its metadata
    (see `as_weights_meta`). The file's tasks are the model's, whatever was passed."""
    meta = as_weights_meta(model, metadata, where=f'{path}: metadata to save')
    names = default_metadata(model).class_names
    names.update({t: list(v) for t, v in meta.class_names.items() if t in model.tasks})
    tensors = OrderedDict()
    for name, t in model.state_dict().items():
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t
    stored = str(dtype).replace('torch.', '') if dtype is not None else 'float32'
    meta = replace(meta, tasks=dict(model.tasks), class_names=names, stored_dtype=stored)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_safetensors(tensors, path, {METADATA_KEY: json.dumps(meta.to_dict())})


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


def _raw_metadata(path):
    with _open(path) as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    if raw is None:
        raise WeightsError(f'{path}: safetensors file has no "{METADATA_KEY}" metadata (not an mffseg model)')
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise WeightsError(f'{path}: corrupt metadata ({e})') from None


def read_metadata(path):
    """The WeightsMeta of a weights file, validated."""
    return WeightsMeta.from_dict(_raw_metadata(path), where=str(path))


def load_weights(path, *, device='cpu'):
    """(MFFNet in eval mode with float32 weights, WeightsMeta). Raises WeightsError with path and reason."""
    meta = read_metadata(path)
    try:
        model = MFFNet(tasks=meta.tasks)
    except (ValueError, TypeError) as e:
        raise WeightsError(f'{path}: bad tasks in metadata ({e})') from None
    with _open(path) as f:
        try:
            state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f'{path}: corrupt tensor data ({e})') from None
    if meta.version == 'mffseg/1':
        state = upgrade_state_dict(state)
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
