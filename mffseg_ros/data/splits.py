"""EndoVis 2017 video splits: the paper's (train 1-6, test 7-8) and the common 4-fold video split."""
from mffseg_ros.errors import DataError

ALL_VIDEOS = tuple(range(1, 9))
PAPER_SPLIT = {'train': (1, 2, 3, 4, 5, 6), 'test': (7, 8)}
FOLDS = {0: (1, 3), 1: (2, 5), 2: (4, 8), 3: (6, 7)}


def fold_videos(fold):
    """(train videos, validation videos) of one of the 4 folds."""
    if fold not in FOLDS:
        raise DataError(f'fold {fold!r}: folds are {sorted(FOLDS)}')
    val = FOLDS[fold]
    return tuple(v for v in ALL_VIDEOS if v not in val), val


def split_videos(name):
    """Videos of a named split: `paper-train`, `paper-test`, `foldK-train`, `foldK-val` (K = 0..3)."""
    key = str(name).strip().lower()
    if key.startswith('paper-') and key[6:] in PAPER_SPLIT:
        return PAPER_SPLIT[key[6:]]
    if key.startswith('fold') and '-' in key:
        fold, part = key[4:].split('-', 1)
        if fold.isdigit() and part in ('train', 'val'):
            train, val = fold_videos(int(fold))
            return train if part == 'train' else val
    raise DataError(f'split {name!r}: expected paper-train, paper-test, fold0-train ... fold3-val')
