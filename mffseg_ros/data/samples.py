"""Combinators of sample sources (anything with len and getitem -> sample dict)."""
import bisect

import numpy as np

from mffseg_ros.errors import DataError


class ConcatSamples:
    """Several sample sources read as one (index ranges in order)."""

    def __init__(self, parts):
        self.parts = [p for p in parts if len(p)]
        self.offsets = [0]
        for p in self.parts:
            self.offsets.append(self.offsets[-1] + len(p))

    def __len__(self):
        return self.offsets[-1]

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = bisect.bisect_right(self.offsets, index) - 1
        return self.parts[k][index - self.offsets[k]]


class Subsampled:
    """Every `stride`-th sample, at most `limit` of them."""

    def __init__(self, base, stride=1, limit=None):
        self.base = base
        self.indices = list(range(0, len(base), max(1, int(stride))))
        if limit is not None:
            self.indices = self.indices[:int(limit)]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.base[self.indices[index]]


class Mirrored:
    """The samples flipped left to right: the image and every label map of its size. A second view of a
    small real set (a proxy scored on more frames; not new data). The name's folder gets `-mirrored`, so
    a mirrored video is a video of its own for tracking."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        sample = dict(self.base[index])
        size = sample['image'].shape[:2]
        for key, value in sample.items():
            if isinstance(value, np.ndarray):
                if value.shape[:2] != size:
                    raise DataError(f'sample {sample.get("name")!r}: cannot mirror {key!r} of shape {value.shape}')
                sample[key] = np.ascontiguousarray(value[:, ::-1])
        name = str(sample.get('name', ''))
        if sequence_name(sample) is None:  # a frame that stands alone stays alone
            sample['name'] = f'{name}-mirrored'
        else:
            folder, _, file = name.rpartition('/')
            sample['name'] = f'{folder}-mirrored/{file}'
        return sample


def sequence_name(sample):
    """The video a sample belongs to (the folder part of its name: `instrument_dataset_1`, `VID03`,
    `clip_561_632`), or None for a frame that stands alone: synthetic scenes and composites are
    independent frames, so tracking across them means nothing."""
    name = str(sample.get('name', ''))
    if '/' not in name or name.startswith('composite/'):
        return None
    return name.rsplit('/', 1)[0]
