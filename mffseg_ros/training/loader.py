"""Sample dicts -> training tensors. Augmentation randomness comes from (seed, epoch, index) alone,
so a run is reproducible whatever the number of loader workers, and a resumed run sees the same data."""
import numpy as np
import torch

from mffseg_ros.data.datasets import build_dataset
from mffseg_ros.data.samples import ConcatSamples
from mffseg_ros.data.transforms import Augment, normalize_image, prepare_sample

TARGET_KEYS = ('parts', 'type', 'binary')


class TensorSamples(torch.utils.data.Dataset):
    """Training (augment given) or evaluation view of a sample source at `size` (H, W)."""

    def __init__(self, samples, size, normalization, augment=None, seed=0, frame_size=None):
        self.samples = samples
        self.size = tuple(int(s) for s in size)
        self.frame_size = None if frame_size is None else tuple(int(s) for s in frame_size)
        self.normalization = normalization
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch, int(index)]) if self.augment else None
        s = prepare_sample(self.samples[index], self.size, augment=self.augment, rng=rng, frame_size=self.frame_size)
        item = {'image': torch.from_numpy(normalize_image(s['image'], self.normalization))}
        for key in TARGET_KEYS:
            item[key] = torch.from_numpy(s[key].astype(np.int64))
        return item


def build_samples(specs):
    """Specs (dicts, already resolved) -> one sample source; `repeat: N` oversamples a spec."""
    sets = []
    for spec in specs:
        spec = dict(spec)
        repeat = int(spec.pop('repeat', 1))
        ds = build_dataset(spec)
        sets += [ds] * max(1, repeat)
    return sets[0] if len(sets) == 1 else ConcatSamples(sets)


def training_samples(cfg, specs):
    """Frames fitted to train_size, zoomed by augment.scale, cropped to crop_size (default train_size):
    small crops of large frames keep CPU steps cheap while the model learns the large frame's scale."""
    return TensorSamples(build_samples(specs), cfg.get('crop_size') or cfg['train_size'], cfg['normalization'],
                         Augment.from_config(cfg['augment']), seed=cfg['seed'], frame_size=cfg['train_size'])


def evaluation_samples(cfg, specs):
    return TensorSamples(build_samples(specs), cfg['train_size'], cfg['normalization'])
