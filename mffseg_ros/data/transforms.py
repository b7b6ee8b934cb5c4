"""Resizing to the training size, the paper's augmentations and input normalisation, on sample dicts.

Label maps are resampled with nearest neighbour; pixels that a geometric transform brings in from
outside the frame are 255 (ignore) in the labels.
"""
from dataclasses import dataclass

import cv2
import numpy as np

from mffseg_ros.data.endovis import IGNORE
from mffseg_ros.model.weights import DEFAULT_NORMALIZATION  # shared with inference

LABEL_KEYS = ('parts', 'type', 'binary', 'instance')


@dataclass
class Augment:
    """Switches of the training augmentations (all off = resizing only)."""
    hflip: bool = True
    vflip: bool = True
    blur: float = 0.0        # probability of a Gaussian blur (sigma 0.5..1.5)
    brightness: float = 0.0  # max relative brightness change, e.g. 0.2 = +-20 %
    skew: float = 0.0        # max horizontal shear (tan of the angle), e.g. 0.1
    # random zoom on top of the resize that covers the frame size; below 1 zooms out (multi-scale
    # training: the network sees tools as large as at frame sizes scale[0]..scale[1] x the frame size)
    scale: tuple = (1.0, 1.0)
    distort: float = 0.0     # probability of a radial lens distortion (barrel or pincushion)
    jpeg: float = 0.0        # probability of JPEG compression (quality 35..90)

    @classmethod
    def from_config(cls, cfg):
        cfg = dict(cfg or {})
        if 'scale' in cfg:
            cfg['scale'] = tuple(float(s) for s in cfg['scale'])
        return cls(**cfg)


def _resize(sample, scale, min_size):
    h, w = sample['image'].shape[:2]
    size = (max(min_size[1], round(w * scale)), max(min_size[0], round(h * scale)))
    if size == (w, h):
        return dict(sample)
    out = dict(sample)
    out['image'] = cv2.resize(sample['image'], size,
                              interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    for key in LABEL_KEYS:
        out[key] = cv2.resize(sample[key], size, interpolation=cv2.INTER_NEAREST)
    return out


def _shear(sample, k):
    h, w = sample['image'].shape[:2]
    m = np.float32([[1, k, -k * h / 2], [0, 1, 0]])
    out = dict(sample)
    out['image'] = cv2.warpAffine(sample['image'], m, (w, h), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    for key in LABEL_KEYS:
        fill = 0 if key == 'instance' else IGNORE
        out[key] = cv2.warpAffine(sample[key], m, (w, h), flags=cv2.INTER_NEAREST,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    return out


def _crop(sample, top, left, size):
    th, tw = size
    return {k: (v[top:top + th, left:left + tw] if k != 'name' else v) for k, v in sample.items()}


def prepare_sample(sample, size, *, augment=None, rng=None, frame_size=None):
    """Sample resized (aspect kept, covering `frame_size` = (H, W), default `size`) and cropped to
    `size`. With `augment` and an `rng` (numpy Generator): random zoom (never below covering `size`),
    crop position, flips, skew, brightness, blur; without: a centre crop and nothing else."""
    th, tw = size
    fh, fw = frame_size or size
    h, w = sample['image'].shape[:2]
    scale = max(fh / h, fw / w)
    if augment is not None and rng is not None:
        scale *= float(rng.uniform(*augment.scale))
    scale = max(scale, th / h, tw / w)
    out = _resize(sample, scale, size)
    if augment is not None and rng is not None and augment.skew > 0:
        out = _shear(out, float(rng.uniform(-augment.skew, augment.skew)))
    h, w = out['image'].shape[:2]
    if augment is not None and rng is not None:
        top, left = int(rng.integers(0, h - th + 1)), int(rng.integers(0, w - tw + 1))
    else:
        top, left = (h - th) // 2, (w - tw) // 2
    out = _crop(out, top, left, size)
    if augment is None or rng is None:
        return {k: (np.ascontiguousarray(v) if k != 'name' else v) for k, v in out.items()}
    flip_h = augment.hflip and rng.random() < 0.5
    flip_v = augment.vflip and rng.random() < 0.5
    for key in ('image',) + LABEL_KEYS:
        v = out[key]
        if flip_h:
            v = v[:, ::-1]
        if flip_v:
            v = v[::-1]
        out[key] = np.ascontiguousarray(v)
    if augment.brightness > 0:
        factor = 1.0 + float(rng.uniform(-augment.brightness, augment.brightness))
        out['image'] = np.clip(out['image'].astype(np.float32) * factor, 0, 255).astype(np.uint8)
    if augment.blur > 0 and rng.random() < augment.blur:
        out['image'] = cv2.GaussianBlur(out['image'], (5, 5), float(rng.uniform(0.5, 1.5)))
    if augment.distort > 0 and rng.random() < augment.distort:
        out = radial_distortion(out, float(rng.uniform(-0.3, 0.15)))
    if augment.jpeg > 0 and rng.random() < augment.jpeg:
        out['image'] = jpeg_roundtrip(out['image'], int(rng.integers(35, 91)))
    return out


def radial_distortion(sample, k):
    """Sample seen through a lens with radial distortion k (r' = r (1 + k r^2), r = 1 at the corners;
    k < 0: barrel, like endoscopes). Labels follow the image; pixels from outside are 255 (ignore)."""
    h, w = sample['image'].shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy, norm = (w - 1) / 2, (h - 1) / 2, np.float32(np.hypot(w, h) / 2)
    dx, dy = (xx - cx) / norm, (yy - cy) / norm
    f = 1 + np.float32(k) * (dx * dx + dy * dy)
    # A barrel lens shows more than the pinhole: scale so the corners map onto the frame's corners.
    f /= np.float32(1 + k)
    map_x, map_y = cx + dx * f * norm, cy + dy * f * norm
    out = dict(sample)
    out['image'] = cv2.remap(sample['image'], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=0)
    for key in LABEL_KEYS:
        fill = 0 if key == 'instance' else IGNORE
        out[key] = cv2.remap(sample[key], map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=fill)
    return out


def jpeg_roundtrip(rgb, quality):
    """The image after JPEG compression at `quality` (block artefacts of recorded, streamed video)."""
    ok, buf = cv2.imencode('.jpg', np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]) if ok else rgb


def normalize_image(rgb, normalization=None):
    """HxWx3 uint8 RGB -> 3xHxW float32, per-channel mean subtracted and divided by std."""
    norm = normalization or DEFAULT_NORMALIZATION
    mean = np.asarray(norm['mean'], np.float32).reshape(1, 1, 3)
    std = np.asarray(norm['std'], np.float32).reshape(1, 1, 3)
    x = (rgb.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))
