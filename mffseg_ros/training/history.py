"""Training history across runs: a run that starts from earlier weights (`init_weights`) continues their
record, so a weights file says how many iterations and hours went into it in total."""
import torch

from mffseg_ros.errors import MffsegError
from mffseg_ros.model.weights import load_weights


def history_of(meta):
    """The runs recorded in a weights file's metadata (model.weights.WeightsMeta, oldest first). Files
    written before histories existed count as one run of their recorded iterations, hours unknown (None)."""
    runs = meta.extra.get('training_history')
    if isinstance(runs, list):
        return [dict(r) for r in runs]
    recipe = meta.recipe or {}
    iters = meta.provenance.iterations or (meta.metrics or {}).get('iterations', recipe.get('iters'))
    return [{'iterations': int(iters or 0), 'hours': meta.provenance.hours, 'config_name': recipe.get('config_name'),
             'train_size': meta.preprocessing.train_size, 'git_revision': meta.provenance.git_revision}]


def totals(runs):
    """(total iterations, total hours over the runs whose hours are known, number of runs without hours)."""
    hours = [r.get('hours') for r in runs]
    return (sum(int(r.get('iterations') or 0) for r in runs), sum(h for h in hours if h is not None),
            sum(h is None for h in hours))


def load_initial_weights(model, path, tasks):
    """Copy the weights at `path` into `model` (same tasks); returns their training history."""
    loaded, meta = load_weights(path)
    if dict(meta.tasks) != {k: int(v) for k, v in tasks.items()}:
        raise MffsegError(f'{path}: init weights have tasks {meta.tasks}, the config trains {dict(tasks)}')
    with torch.no_grad():
        model.load_state_dict(loaded.state_dict())
    return history_of(meta)
