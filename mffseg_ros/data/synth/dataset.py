"""SynthDataset: an endless supply of labelled synthetic frames as a torch-free Sequence."""
from collections.abc import Sequence

from mffseg_ros.data.synth.rig import StereoRig
from mffseg_ros.data.synth.scene import SceneGenerator
from mffseg_ros.errors import DataError

EYES = ('left', 'right', 'both')


class SynthDataset(Sequence):
    """`length` samples (CONTRACTS.md dicts) rendered on demand at size=(H, W).

    Sample j is frame j of a SceneGenerator(seed) whose episodes are `episode_length` frames long
    (default 1: every sample is a new scene; textures come from a cached pool). eye: 'left', 'right'
    or 'both' (left for even j, right for odd j). Extra keyword arguments go to SceneGenerator.
    The generator is built lazily in each process, so the dataset pickles small for DataLoader workers."""

    def __init__(self, length, *, rig=None, size=(256, 320), seed=0, eye='left', episode_length=1,
                 **generator_kwargs):
        if int(length) < 0:
            raise DataError(f'synth data set: length must be >= 0, got {length}')
        if eye not in EYES:
            raise DataError(f'synth data set: eye must be one of {EYES}, got {eye!r}')
        base = rig if rig is not None else StereoRig.endovis_like()
        if size is not None:
            h, w = (int(v) for v in size)
            if h < 16 or w < 16:
                raise DataError(f'synth data set: size must be (H, W) of at least 16 px, got {size!r}')
            base = base.resized(w, h)
        self.length, self.rig, self.seed, self.eye = int(length), base, int(seed), eye
        self.generator_kwargs = dict(generator_kwargs, episode_length=episode_length)
        self._generator = None
        _ = self.generator  # build it once now, so bad settings fail here and not in a worker

    @property
    def generator(self):
        if self._generator is None:
            try:
                self._generator = SceneGenerator(self.rig, seed=self.seed, **self.generator_kwargs)
            except TypeError as e:  # an unknown keyword from a config file
                raise DataError(f'synth data set: {e}') from e
        return self._generator

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_generator'] = None  # caches are per process
        return state

    def __len__(self):
        return self.length

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[k] for k in range(*j.indices(self.length))]
        j = int(j)
        if j < 0:
            j += self.length
        if not 0 <= j < self.length:
            raise IndexError(f'synth sample {j} out of range (length {self.length})')
        side = self.eye if self.eye != 'both' else ('left', 'right')[j % 2]
        return self.generator.sample(j, side)


CALIBRATION_SEED = 101  # not a training seed (1) nor a held-out one (998, 999)


def calibration_frames(count=16, size=(384, 480), seed=CALIBRATION_SEED):
    """`count` RGB frames (left and right eyes of count // 2 scenes, tissue and lab backgrounds) for
    calibrating an int8 model: activation ranges from frames that look like its input."""
    eyes = [SynthDataset((count + 1) // 2, size=size, seed=seed, eye=eye) for eye in ('left', 'right')]
    return [eyes[k % 2][k // 2]['image'] for k in range(int(count))]


def calibration_options(precision, size=(384, 480)):
    """Segmenter keyword arguments a precision needs beyond the model: int8 takes calibration frames."""
    return {'calibration_frames': calibration_frames(size=size)} if precision == 'int8' else {}
