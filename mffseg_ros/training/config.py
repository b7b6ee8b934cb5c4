"""Training configs: YAML files merged over the defaults, with `key.sub=value` overrides.

Data specs (`data.train`, `data.val`) are `parse_data_spec` strings or dicts; a relative `root` is
taken relative to `data.root` (default ../shared/data: the data folder beside a clone, see README). A
spec may carry `repeat: N` to oversample it.
"""
import copy
import math
import re
from pathlib import Path

import yaml

from mffseg_ros.data.datasets import parse_data_spec
from mffseg_ros.errors import DataError, MffsegError, one_line
from mffseg_ros.model.classes import NUM_CLASSES
from mffseg_ros.model.weights import DEFAULT_NORMALIZATION

DEFAULTS = {
    'name': 'run',
    'tasks': {'parts': 4, 'type': 8},
    'data': {'root': '../shared/data', 'train': [], 'val': []},
    'train_size': [256, 320],   # (H, W), multiples of 32: the frame size the model is trained for
    'crop_size': None,          # (H, W) training crops of the train_size frames (default: train_size)
    'init_weights': None,       # weights file to start from (continues its training history)
    'input_scale': 0.25,        # frame scale the inference applies before the network (metadata)
    'normalization': DEFAULT_NORMALIZATION,
    'encoder_weights': None,    # ImageNet ResNet-18 weights (torchvision/timm) to start the encoder from
    'augment': {'hflip': True, 'vflip': True, 'blur': 0.0, 'brightness': 0.0, 'skew': 0.0, 'scale': [1.0, 1.0]},
    'recipe': {
        'iters': 1000, 'batch_size': 8,
        'lr': 1.0e-3, 'disc_lr': 1.5e-4, 'poly_power': 0.9, 'weight_decay': 5.0e-4,
        'aux': True, 'aux_weight': 0.4, 'adversarial': True, 'adv_weight': 0.01,
        'binary_weight': 1.0,  # loss weight of binary-only pixels (real frames without parts/type)
        'class_weights': None,  # {task: [weight per class]}: e.g. parts [1, 1, 1.5, 2] for small jaws
        'amp': True,  # CUDA only
    },
    'seed': 0,
    'workers': 2,
    'checkpoint_every': 200,
    'log_every': 10,
    'val_every': 0,   # 0: validate only at the end (when data.val is set)
}


class ConfigError(MffsegError):
    """A training config is missing, unreadable or has a bad value."""


class _Loader(yaml.SafeLoader):
    """YAML as people write numbers: PyYAML follows YAML 1.1, where `2e-4` (no dot) is a string."""


_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?'
               r'|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$'),
    list('-+0123456789.'))


def _load_yaml(text):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass: plain data only


MERGED_SECTIONS = ('data', 'augment', 'recipe')  # other values (tasks, normalization) are replaced whole


def _merge(base, update):
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if key in MERGED_SECTIONS and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(cfg, text):
    """`recipe.iters=5` -> cfg['recipe']['iters'] = 5 (the value is parsed as YAML)."""
    key, sep, raw = text.partition('=')
    if not sep or not key:
        raise ConfigError(f'override {text!r}: expected key.sub=value')
    try:
        value = _load_yaml(raw) if raw else None
    except yaml.YAMLError as e:
        raise ConfigError(f'override {text!r}: the value is not valid YAML ({one_line(e)})') from None
    node = cfg
    parts = key.strip().split('.')
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            raise ConfigError(f'override {text!r}: {p!r} is not a section of the config')
        node = node[p]
    if parts[-1] not in node and node is not cfg.get('data'):
        raise ConfigError(f'override {text!r}: unknown key {key!r}')
    node[parts[-1]] = value
    return cfg


def load_config(path=None, overrides=(), *, validated=True):
    """Defaults <- YAML file <- overrides; validated unless more changes are to come."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        try:
            loaded = _load_yaml(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f'{path}: cannot read the training config ({one_line(e)})') from None
        if not isinstance(loaded, dict):
            raise ConfigError(f'{path}: a training config is a YAML mapping')
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f'{path}: unknown keys {unknown} (known: {sorted(DEFAULTS)})')
        cfg = _merge(cfg, loaded)
    for text in overrides:
        apply_override(cfg, text)
    if validated:
        validate(cfg, path or 'defaults')
    return cfg


def _number(value, key, kind):
    """`value` as a float or an int (1e3 is 1000, 1.5 is no int); booleans and text are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f'{key}: expected a number, got {value!r}')
    if kind is int and not (math.isfinite(value) and value == int(value)):
        raise ConfigError(f'{key}: expected a whole number, got {value!r}')
    return kind(value)


def validate(cfg, where='config'):
    try:
        _validate(cfg, where)
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(f'{where}: bad value ({type(e).__name__}: {e})') from None


def _validate(cfg, where):
    h, w = (int(v) for v in cfg['train_size'])
    if h % 32 or w % 32 or h <= 0 or w <= 0:
        raise ConfigError(f'{where}: train_size {h}x{w} must be positive multiples of 32')
    if cfg.get('crop_size') is not None:
        ch, cw = (int(v) for v in cfg['crop_size'])
        if ch % 32 or cw % 32 or not 0 < ch <= h or not 0 < cw <= w:
            raise ConfigError(f'{where}: crop_size {ch}x{cw} must be positive multiples of 32, at most train_size')
    if cfg.get('init_weights') is not None and not Path(str(cfg['init_weights'])).expanduser().is_file():
        raise ConfigError(f'{where}: init_weights {cfg["init_weights"]}: weights file not found')
    r = cfg['recipe']
    for key in ('lr', 'disc_lr', 'poly_power', 'weight_decay', 'aux_weight', 'adv_weight', 'binary_weight'):
        r[key] = _number(r[key], f'{where}: recipe.{key}', float)
    for key in ('iters', 'batch_size'):
        r[key] = _number(r[key], f'{where}: recipe.{key}', int)
    for key in ('seed', 'workers', 'checkpoint_every', 'log_every', 'val_every'):
        cfg[key] = _number(cfg[key], f'{where}: {key}', int)
    if r['iters'] < 1 or r['batch_size'] < 1:
        raise ConfigError(f'{where}: recipe.iters and recipe.batch_size must be >= 1')
    if int(cfg['checkpoint_every']) < 1 or int(cfg['log_every']) < 1:
        raise ConfigError(f'{where}: checkpoint_every and log_every must be >= 1')
    if int(cfg['workers']) < 0:
        raise ConfigError(f'{where}: workers must be >= 0 (0: load data in the main process)')
    if not isinstance(cfg['tasks'], dict) or not cfg['tasks']:
        raise ConfigError(f'{where}: tasks must map task names to class counts, e.g. {{parts: 4, type: 8}}')
    bad = [t for t, c in cfg['tasks'].items() if NUM_CLASSES.get(t) != int(c)]
    if bad:
        raise ConfigError(f'{where}: tasks {bad}: known tasks and class counts are {NUM_CLASSES}')
    r['class_weights'] = _class_weights(r.get('class_weights'), cfg['tasks'], where)
    if cfg.get('encoder_weights') is not None and not isinstance(cfg['encoder_weights'], str):
        raise ConfigError(f'{where}: encoder_weights must be a file path or null')
    if not cfg['data']['train']:
        raise ConfigError(f'{where}: data.train is empty (give a data spec, e.g. --data synth:?frames=64)')


def _class_weights(value, tasks, where):
    """recipe.class_weights: null, or {task: one positive number per class of that task}."""
    if value is None:
        return None
    key = f'{where}: recipe.class_weights'
    if not isinstance(value, dict):
        raise ConfigError(f'{key}: expected {{task: [weight per class]}}, e.g. {{parts: [1, 1, 1.5, 2]}}, '
                          f'got {value!r}')
    out = {}
    for task, weights in value.items():
        if task not in tasks:
            raise ConfigError(f'{key}: task {task!r} is not trained (tasks: {sorted(tasks)})')
        if not isinstance(weights, (list, tuple)) or len(weights) != int(tasks[task]):
            raise ConfigError(f'{key}.{task}: expected {tasks[task]} weights (one per class), got {weights!r}')
        out[task] = [_number(w, f'{key}.{task}', float) for w in weights]
        if not all(math.isfinite(w) and w > 0 for w in out[task]):
            raise ConfigError(f'{key}.{task}: weights must be positive, got {weights!r}')
    return out


def resolve_specs(specs, data_root):
    """Spec strings/dicts -> dicts with roots resolved against `data_root`."""
    out = []
    for spec in specs or []:
        spec = parse_data_spec(spec) if isinstance(spec, str) else dict(spec)
        if spec.get('root'):
            root = Path(str(spec['root'])).expanduser()
            if not root.is_absolute():
                root = Path(data_root).expanduser() / root
            spec['root'] = str(root)
        if 'kind' not in spec:
            raise DataError(f'data spec {spec}: no kind')
        out.append(spec)
    return out
