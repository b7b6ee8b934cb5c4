"""`mffseg average START TUNED --alpha A --out W`: the weights (1 - A) x START + A x TUNED.

Weight-space ensembling of a fine-tuned file with the file it started from (WiSE-FT: Wortsman et al.,
"Robust fine-tuning of zero-shot models", CVPR 2022). A continuation on synthetic scenes learns them
better and begins to forget the real laparoscopic instruments; the average of the two keeps much of
both (models/README.md). Every floating-point tensor is interpolated (batch-norm statistics included);
integer buffers come from TUNED. The result is float32 with TUNED's metadata (its training history is
the lineage of both files), its validation metrics dropped (they were the tuned file's), and the
average recorded under `weight_average`."""
import hashlib
import logging
import math
from dataclasses import replace
from pathlib import Path

import torch

from mffseg_ros.errors import MffsegError
from mffseg_ros.model.weights import load_weights, save_weights
from mffseg_ros.training.logs import git_revision

log = logging.getLogger(__name__)


def add_arguments(parser):
    parser.add_argument('start', metavar='START', help='the weights the fine-tuning started from')
    parser.add_argument('tuned', metavar='TUNED', help='the fine-tuned weights (same tasks)')
    parser.add_argument('--alpha', type=float, required=True,
                        help="TUNED's share, 0..1 (0 gives START, 1 gives TUNED)")
    parser.add_argument('--out', required=True, help='weights file to write (float32 safetensors)')


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def average_weights(start, tuned, alpha, out):
    """Writes (1 - alpha) x start + alpha x tuned to `out`; returns its path."""
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise MffsegError(f'--alpha must be a number from 0 to 1, got {alpha!r}')
    start_model, start_meta = load_weights(start)
    tuned_model, tuned_meta = load_weights(tuned)
    if dict(start_meta.tasks) != dict(tuned_meta.tasks):
        raise MffsegError(f'{start} has tasks {dict(start_meta.tasks)}, {tuned} has {dict(tuned_meta.tasks)}: '
                          'only files of one architecture can be averaged')
    first = start_model.state_dict()
    state = {name: torch.lerp(first[name], t, alpha) if t.is_floating_point() else t
             for name, t in tuned_model.state_dict().items()}
    tuned_model.load_state_dict(state)
    record = {'alpha': float(alpha), 'git_revision': git_revision(),
              'start': {'file': Path(start).name, 'sha256': _sha256(start),
                        'iterations': start_meta.extra.get('total_iterations')},
              'tuned': {'file': Path(tuned).name, 'sha256': _sha256(tuned),
                        'iterations': tuned_meta.extra.get('total_iterations')}}
    meta = replace(tuned_meta, metrics={}, extra=dict(tuned_meta.extra, weight_average=record))
    log.info('%s: %.2f x %s + %.2f x %s', out, 1 - alpha, start, alpha, tuned)
    return save_weights(out, tuned_model, meta)


def run(args):
    average_weights(args.start, args.tuned, args.alpha, args.out)
    print(f'wrote {args.out}')
    return 0
