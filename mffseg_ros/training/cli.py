"""`mffseg train --config configs/X.yaml --out runs/NAME [--resume] [overrides]`."""
import os
from pathlib import Path

from mffseg_ros.data.datasets import parse_data_spec
from mffseg_ros.errors import MffsegError
from mffseg_ros.training.config import apply_override, load_config, validate
from mffseg_ros.training.trainer import Trainer


def add_arguments(parser):
    parser.add_argument('--config', help='training config (YAML), e.g. configs/default_multitask.yaml')
    parser.add_argument('--out', help='run folder (default: runs/<config name>)')
    parser.add_argument('--resume', action='store_true', help='continue from <out>/checkpoint')
    parser.add_argument('--init-weights', metavar='PATH',
                        help='start from these weights (e.g. models/mffseg_default.safetensors); the new '
                             'weights record the total iterations and hours of both runs')
    parser.add_argument('--iters', type=int, help='override recipe.iters')
    parser.add_argument('--batch-size', type=int, help='override recipe.batch_size (per process)')
    parser.add_argument('--data', action='append', metavar='SPEC',
                        help='training data spec, replaces data.train (repeatable), e.g. synth:?frames=64')
    parser.add_argument('--val', action='append', metavar='SPEC', help='validation data spec (repeatable)')
    parser.add_argument('--data-root', help='folder that relative data roots in the config refer to '
                                            '(default: data.root of the config, ../shared/data)')
    parser.add_argument('--train-size', type=int, nargs=2, metavar=('H', 'W'), help='override train_size')
    parser.add_argument('--workers', type=int, help='data loader worker processes')
    parser.add_argument('--seed', type=int, help='override seed')
    parser.add_argument('--no-aux', action='store_true', help='drop the auxiliary loss (Table I ablation)')
    parser.add_argument('--no-adversarial', action='store_true', help='drop the adversarial loss')
    parser.add_argument('--encoder-weights', metavar='PATH',
                        help='start the encoder from ImageNet ResNet-18 weights: torchvision or timm, '
                             '.safetensors or a torchvision .pth (read weights-only, never unpickled)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N (torchrun sets the rank)')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='override any config key, e.g. --set augment.skew=0.1')


def _absolute_spec(text):
    """A spec given on the command line: its relative path is relative to the current directory."""
    spec = parse_data_spec(text)
    if spec.get('root'):
        spec['root'] = str(Path(spec['root']).expanduser().resolve())
    return spec


def build_config(args):
    """The config file (or the defaults) with the command line's overrides applied."""
    cfg = load_config(args.config, validated=False)
    overrides = list(args.set)
    for value, key in ((args.iters, 'recipe.iters'), (args.batch_size, 'recipe.batch_size'),
                       (args.workers, 'workers'), (args.seed, 'seed'), (args.data_root, 'data.root')):
        if value is not None:
            overrides.append(f'{key}={value}')
    if args.encoder_weights:
        cfg['encoder_weights'] = str(Path(args.encoder_weights).expanduser().resolve())
    if args.train_size:
        overrides.append(f'train_size=[{args.train_size[0]}, {args.train_size[1]}]')
    if args.no_aux:
        overrides.append('recipe.aux=false')
    if args.no_adversarial:
        overrides.append('recipe.adversarial=false')
    if args.init_weights:
        cfg['init_weights'] = str(Path(args.init_weights).expanduser().resolve())
    if args.data:
        cfg['data']['train'] = [_absolute_spec(s) for s in args.data]
    if args.val:
        cfg['data']['val'] = [_absolute_spec(s) for s in args.val]
    for text in overrides:
        apply_override(cfg, text)
    validate(cfg, args.config or 'command line')
    return cfg


def run(args):
    cfg = build_config(args)
    if args.config is None and args.out:  # no config file: the run is named after its folder
        cfg['name'] = Path(args.out).name
    out = Path(args.out or Path('runs') / cfg['name'])
    if not args.resume and (out / 'checkpoint' / 'state.json').is_file():
        raise MffsegError(f'{out}: already holds a run; pass --resume to continue it or choose another --out')
    if out.exists() and not out.is_dir():
        raise MffsegError(f'{out}: exists and is not a folder (--out is the run folder)')
    try:  # fail now, not after the data sets and the model are built
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MffsegError(f'{out}: cannot create the run folder ({e.strerror or e})') from None
    path = Trainer(cfg, out, device=args.device, resume=args.resume).run()
    if int(os.environ.get('RANK', '0')) == 0:
        print(path)
    return 0
