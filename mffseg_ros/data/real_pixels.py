"""Real pixels in synthetic training scenes: rendered instruments over real endoscope frames, and real
(laparoscopic) instruments cut out with their masks and pasted over synthetic or real scenes.

The synthetic generator alone teaches a model its own tissue and lighting; real backgrounds teach it
what real tissue, smoke and glare look like behind a tool, and pasted real instruments give real metal
and plastic surfaces. Labels stay honest: rendered tools keep full parts/type labels; real instruments
(the background frame's own or pasted ones) are binary-only (parts/type 255 = ignore, which the loss
trains through P(instrument)); a thin ring around every pasted edge is ignored in all tasks.

Spec: `composite:DATA_ROOT?frames=N&seed=S&size=HxW` with DATA_ROOT holding `cholecseg8k/` (frames
with instrument masks: backgrounds and cut-out tools) and optionally `scared/` (rectified da Vinci
frames without masks: backgrounds only, their instrument corners ignored)."""
from pathlib import Path

import cv2
import numpy as np

from mffseg_ros.data.endovis import IGNORE, read_rgb
from mffseg_ros.errors import DataError

MODES = ('real_background', 'real_tools', 'both')
EDGE_RING = 2  # px around pasted edges whose label is unknown (blended pixels)
# SCARED keyframe 1: instrument slivers at the top-right and bottom-right edges (no masks exist).
SCARED_IGNORE = ((0.8, 1.0, 0.0, 0.3), (0.6, 1.0, 0.6, 1.0))  # x0, x1, y0, y1 as fractions


def _fit(image, labels, size):
    """Centre crop to the aspect of `size` (H, W) and resize: images area/linear, labels nearest."""
    th, tw = size
    h, w = image.shape[:2]
    if w * th > h * tw:
        cw = int(round(h * tw / th))
        x0, y0, ch = (w - cw) // 2, 0, h
    else:
        ch = int(round(w * th / tw))
        x0, y0, cw = 0, (h - ch) // 2, w
    image = image[y0:y0 + ch, x0:x0 + cw]
    interp = cv2.INTER_AREA if ch > th else cv2.INTER_LINEAR
    image = cv2.resize(image, (tw, th), interpolation=interp)
    labels = cv2.resize(np.ascontiguousarray(labels[y0:y0 + ch, x0:x0 + cw]), (tw, th),
                        interpolation=cv2.INTER_NEAREST)
    return image, labels


def _scared_frames(root):
    out = []
    for path in sorted(Path(root).glob('*/*_rectified.png')):
        image = read_rgb(path)
        h, w = image.shape[:2]
        binary = np.zeros((h, w), np.uint8)
        for x0, x1, y0, y1 in SCARED_IGNORE:
            binary[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)] = IGNORE
        out.append((image, binary))
    return out


class RealFrames:
    """Real frames (RGB, binary instrument label with 255 = unknown) fitted to `size`, loaded once."""

    def __init__(self, root, size):
        from mffseg_ros.data.cholec import cholecseg8k
        root = Path(root)
        if not (root / 'cholecseg8k').is_dir():
            raise DataError(f'{root}: composite data needs a cholecseg8k/ folder (real frames with masks)')
        self.frames, self.with_tools, groups = [], [], {}
        source = cholecseg8k(root / 'cholecseg8k')
        for i in range(len(source)):
            s = source[i]
            image, binary = _fit(s['image'], s['binary'], size)
            if (binary == 1).sum() > 0.002 * binary.size:
                self.with_tools.append(len(self.frames))
            groups.setdefault(s['name'].split('/')[0], []).append(len(self.frames))
            self.frames.append((image, binary))
        if (root / 'scared').is_dir():
            scared = [_fit(img, b, size) for img, b in _scared_frames(root / 'scared')]
            groups['scared'] = list(range(len(self.frames), len(self.frames) + len(scared)))
            self.frames += scared
        # Backgrounds are drawn video first (weight: the square root of its frame count), then frame: a
        # 72-frame clip of one scene must not crowd out the other videos, nor 2 SCARED frames the rest.
        self.groups = [g for g in groups.values() if g]
        weights = np.sqrt([len(g) for g in self.groups])
        self.group_p = weights / weights.sum()
        if not self.with_tools:
            raise DataError(f'{root / "cholecseg8k"}: no frame shows an instrument to cut out')


def _feather(mask, sigma=0.8):
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)[..., None]


def _ring(mask):
    k = np.ones((2 * EDGE_RING + 1, 2 * EDGE_RING + 1), np.uint8)
    m = mask.astype(np.uint8)
    return (cv2.dilate(m, k) > 0) & ~(cv2.erode(m, k) > 0)


def paste_synthetic_tools(background, back_binary, synth):
    """Rendered tools of `synth` (a sample dict) over a real frame; returns a new sample dict.
    The tools are matched to the frame's brightness; the frame's own instruments stay binary-only."""
    tools = synth['parts'] > 0
    out_image = background.astype(np.float32)
    if tools.any():
        ratio = (background[~tools].mean() + 1) / (synth['image'][~tools].mean() + 1) if (~tools).any() else 1.0
        tool_rgb = synth['image'].astype(np.float32) * float(np.clip(ratio, 0.6, 1.4))
        alpha = _feather(tools)
        out_image = out_image * (1 - alpha) + tool_rgb * alpha
    parts = np.where(tools, synth['parts'], np.where(back_binary == 0, 0, IGNORE)).astype(np.uint8)
    types = np.where(tools, synth['type'], np.where(back_binary == 0, 0, IGNORE)).astype(np.uint8)
    binary = np.where(tools, 1, back_binary).astype(np.uint8)
    ring = _ring(tools)
    # Labels of the real frame where the synthetic tool's blended edge lies over it: keep binary
    # where the frame itself is known; parts/type on the ring belong to the rendered edge.
    sample = {'image': np.clip(out_image + 0.5, 0, 255).astype(np.uint8), 'parts': parts, 'type': types,
              'binary': binary, 'instance': np.where(tools, synth['instance'], 0).astype(np.uint16)}
    for key in ('parts', 'type', 'binary'):
        sample[key][ring] = IGNORE
    return sample


def paste_real_tools(sample, tool_image, tool_binary, rng):
    """Real instruments (tool_binary == 1) of another frame over `sample` (flipped at random, so they still
    enter from a border); they are in front and binary-only."""
    flip_h, flip_v = rng.random() < 0.5, rng.random() < 0.5
    if flip_h:
        tool_image, tool_binary = tool_image[:, ::-1], tool_binary[:, ::-1]
    if flip_v:
        tool_image, tool_binary = tool_image[::-1], tool_binary[::-1]
    tools = tool_binary == 1
    if not tools.any():
        return sample
    alpha = _feather(tools)
    image = sample['image'].astype(np.float32) * (1 - alpha) + tool_image.astype(np.float32) * alpha
    out = dict(sample, image=np.clip(image + 0.5, 0, 255).astype(np.uint8))
    ring = _ring(tools)
    for key in ('parts', 'type'):
        out[key] = np.where(tools | ring, IGNORE, sample[key]).astype(np.uint8)
    out['binary'] = np.where(tools, 1, np.where(ring, IGNORE, sample['binary'])).astype(np.uint8)
    out['instance'] = np.where(tools, 0, sample['instance']).astype(np.uint16)
    return out


class CompositeDataset:
    """`length` samples at `size` (H, W): synthetic scenes (SynthDataset, seed `seed`) combined with real
    frames from `root`. Each sample's mode is drawn from (seed, index): 'real_background' (rendered tools
    over a real frame), 'real_tools' (real instruments over a synthetic scene) or 'both'. Extra keyword
    arguments go to the synthetic scene generator."""

    def __init__(self, root, length, *, size=(384, 480), seed=0, mode_weights=(0.45, 0.35, 0.2), **synth_kwargs):
        from mffseg_ros.data.synth import SynthDataset
        self.root, self.size, self.seed = Path(root), tuple(int(v) for v in size), int(seed)
        if not self.root.is_dir():
            raise DataError(f'{self.root}: composite data root not found')
        w = np.asarray(mode_weights if not isinstance(mode_weights, str) else mode_weights.split(','), float)
        if w.shape != (3,) or (w < 0).any() or w.sum() <= 0:
            raise DataError(f'composite data: mode_weights must be 3 weights >= 0, got {mode_weights!r}')
        self.mode_p = w / w.sum()
        self.synth = SynthDataset(length, size=self.size, seed=seed, **synth_kwargs)
        self._real = None
        _ = self.real  # fail now on a bad root, not in a loader worker

    @property
    def real(self):
        if self._real is None:
            self._real = RealFrames(self.root, self.size)
        return self._real

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_real'] = None  # reloaded per worker, not pickled
        return state

    def __len__(self):
        return len(self.synth)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, int(index), 4243])
        mode = MODES[int(rng.choice(3, p=self.mode_p))]
        synth = self.synth[index]
        frames = self.real.frames
        if mode == 'real_tools':
            sample = dict(synth)
        else:
            group = self.real.groups[int(rng.choice(len(self.real.groups), p=self.real.group_p))]
            image, binary = frames[group[int(rng.integers(len(group)))]]
            sample = paste_synthetic_tools(image, binary, synth)
        if mode != 'real_background':
            image, binary = frames[self.real.with_tools[int(rng.integers(len(self.real.with_tools)))]]
            sample = paste_real_tools(sample, image, binary, rng)
        sample['name'] = f'composite/{mode}/{index:06d}'
        return sample
