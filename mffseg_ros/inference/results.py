"""What the network gives for one frame, kept at the network's resolution.

Instances, tips and tracking run on the network's output grid (a few hundred thousand pixels whatever
the camera's resolution); label images at the input resolution are made only when asked for
(`result.type`, `result.parts`, ...), and cached.

Upsampling (measured against bilinear logit upsampling in docs/BENCHMARKS.md): the instrument
probability is resized bilinearly and thresholded at 0.5, which keeps the instrument outline as
smooth as upsampling every logit channel; the labels inside it come from the nearest network pixel,
with background pixels next to an instrument filled from their instrument neighbour so the smooth
outline never exposes a background label. Parts are the exception: their three probabilities are
upsampled bilinearly (a thin wrist would lose a band of pixels to the nearest network pixel).
"""
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

FOREGROUND_THRESHOLD = 0.5  # P(instrument) above which a pixel belongs to an instrument
_FILL_KERNEL = np.ones((3, 3), np.uint8)


def to_input_coords(uv, net_size, size):
    """Network-grid pixel coordinates (..., 2: u, v) -> input-image coordinates (pixel centres at integers)."""
    uv = np.asarray(uv, np.float64)
    sx, sy = size[1] / net_size[1], size[0] / net_size[0]
    return np.stack([(uv[..., 0] + 0.5) * sx - 0.5, (uv[..., 1] + 0.5) * sy - 0.5], axis=-1)


def upsample_probability(prob, size):
    """HxW float map -> `size` (H, W), bilinear with half-pixel centres (as torch align_corners=False)."""
    if prob.shape == tuple(size):
        return prob
    return cv2.resize(np.ascontiguousarray(prob, np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def upsample_labels(labels, foreground, size, inside=None):
    """Net-resolution labels (uint8 or uint16, 0 = background) -> `size`, inside the upsampled instrument
    outline of `foreground` (net-resolution P(instrument)); see the module doc for the method.
    `inside`: that outline, when the caller has it already."""
    if labels.shape == tuple(size):
        return np.where(foreground > FOREGROUND_THRESHOLD, labels, 0).astype(labels.dtype)
    if inside is None:
        inside = outline(foreground, size)
    filled = labels
    if labels.any():
        # cv2.dilate takes uint8/uint16: a 3x3 maximum gives a background pixel a neighbouring label.
        filled = cv2.dilate(labels, _FILL_KERNEL)
        if labels.dtype == np.uint8:  # own labels kept: a uint8 label map is its own copy mask
            cv2.copyTo(labels, labels, filled)
        else:
            filled = np.where(labels > 0, labels, filled)
    up = cv2.resize(filled, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return cv2.copyTo(up, inside)  # zero outside (cv2: boolean indexing of a large frame is slow)


def outline(foreground, size):
    """uint8 mask (1 inside) of the instrument outline at `size`: bilinear P(instrument) > 0.5."""
    return np.greater(upsample_probability(foreground, size), FOREGROUND_THRESHOLD).view(np.uint8)


@dataclass
class SegmentationResult:
    """One frame's network output at the network's resolution (h x w), with lazily upsampled maps.

    foreground: P(instrument) (mean over the heads of 1 - P(background)), float32 h x w.
    net_parts: 0..3 per pixel (0 where foreground <= 0.5), or None without a parts head.
    net_type: the per-pixel most likely instrument type 1..7 (0 where foreground <= 0.5), or None.
    type_probs: T x h x w float32, P(type | instrument) for types 1..T, or None without a type head.
    confidence_net: max softmax probability of the type (else parts) head.
    size: (H, W) of the input frame the maps describe.
    """
    foreground: np.ndarray
    net_parts: np.ndarray | None
    net_type: np.ndarray | None
    type_probs: np.ndarray | None
    confidence_net: np.ndarray
    size: tuple
    class_names: dict = field(default_factory=dict)
    parts_probs: np.ndarray | None = None  # P(part | instrument), 3 x h x w: smooth part boundaries on upsampling
    net_dark: np.ndarray | None = None  # bool h x w: near-black input pixels (the field stop), when known
    image: np.ndarray | None = None  # the input frame (H x W x 3, RGB), when known: stereo refines tips on it
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    # Maps may be made on a second thread (prepare) while the caller asks for them: each is made once.
    _lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)

    @classmethod
    def from_labels(cls, parts=None, type_map=None, binary=None, *, size=None, num_types=7, class_names=None):
        """A result that is certain of the given label maps (ground truth, tests): P(instrument) 1 on
        instrument pixels (of `binary`, else `type_map`, else `parts`), one-hot type probabilities.
        255 (not labelled) counts as background."""
        maps = [m for m in (type_map, parts, binary) if m is not None]
        if not maps:
            raise ValueError('from_labels needs at least one label map')
        shape = np.asarray(maps[0]).shape
        clean = [None if m is None else np.where(np.asarray(m) == 255, 0, m).astype(np.uint8)
                 for m in (parts, type_map, binary)]
        parts, type_map, binary = clean
        fg = next(m for m in (binary, type_map, parts) if m is not None) > 0
        type_probs = None
        if type_map is not None:
            type_map = np.where(fg, type_map, 0).astype(np.uint8)
            type_probs = np.zeros((num_types, *shape), np.float32)
            for t in range(num_types):
                type_probs[t] = type_map == t + 1
            type_probs[:, ~fg] = 1.0 / num_types
        if parts is not None:
            parts = np.where(fg, parts, 0).astype(np.uint8)
        return cls(foreground=fg.astype(np.float32), net_parts=parts, net_type=type_map, type_probs=type_probs,
                   confidence_net=np.ones(shape, np.float32), size=tuple(size or shape),
                   class_names=class_names or {})

    @property
    def net_size(self):
        return self.foreground.shape

    @property
    def net_binary(self):
        return self.foreground > FOREGROUND_THRESHOLD

    @property
    def scale(self):
        """(sx, sy): input pixels per network pixel."""
        return self.size[1] / self.net_size[1], self.size[0] / self.net_size[0]

    def _upsampled(self, key, make):
        with self._lock:  # a caller asking for a map another thread is making waits for it
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def _inside(self):
        """The instrument outline at the input resolution (bilinear P(instrument) > 0.5), made once."""
        return self._upsampled('inside', lambda: outline(self.foreground, self.size))

    PREPARABLE = ('outline', 'binary', 'parts', 'type', 'confidence')

    @classmethod
    def check_preparable(cls, names):
        """ValueError unless every one of `names` is a map prepare() makes."""
        unknown = [name for name in names if name not in cls.PREPARABLE]
        if unknown:
            raise ValueError(f'cannot prepare {unknown}: maps are {cls.PREPARABLE}')

    def prepare(self, names):
        """Makes the input-resolution maps `names` (of PREPARABLE; 'outline': the instrument outline
        every upsampled image is cut by) now, e.g. on a second thread while the caller searches the
        instruments: they need no instruments, and OpenCV, which makes them, releases the GIL."""
        self.check_preparable(names)
        for name in names:
            if name == 'outline':
                self._inside()
            else:
                getattr(self, name)

    def upsample(self, labels):
        """Any net-resolution label map of this frame (e.g. an instance map) -> input resolution."""
        return upsample_labels(labels, self.foreground, self.size, self._inside())

    @property
    def binary(self):
        """H x W bool at the input resolution."""
        # The same procedure as parts and type (whose non-zero pixels are exactly the network's
        # instrument pixels), so binary, parts > 0 and type > 0 always agree.
        return self._upsampled('binary', lambda: self.upsample(self.net_binary.view(np.uint8)) > 0)

    @property
    def parts(self):
        """H x W uint8 0..3 at the input resolution (None without a parts head)."""
        if self.net_parts is None:
            return None
        if self.parts_probs is None or self.net_size == tuple(self.size):
            return self._upsampled('parts', lambda: self.upsample(self.net_parts))
        return self._upsampled('parts', self._smooth_parts)

    def _smooth_parts(self):
        """Thin parts (the wrist) lose a band of pixels to nearest-neighbour upsampling: their part
        probabilities are upsampled bilinearly instead (three channels in one resize), inside the
        instrument outline. As 8-bit levels: cv2 resizes those several times faster than floats, and
        the labels agree with float resizing on 99.98 % of instrument pixels (synthetic frames)."""
        levels = self.parts_probs * 255
        levels += 0.5
        levels = levels.astype(np.uint8)
        # Channel by channel (as one 3-channel resize would: same values) saves splitting the result.
        shaft, wrist, claspers = (cv2.resize(level, (self.size[1], self.size[0]), interpolation=cv2.INTER_LINEAR)
                                  for level in levels)
        parts = cv2.add(cv2.compare(wrist, shaft, cv2.CMP_GT) & 1, 1)  # 2 where the wrist wins, else 1
        parts = cv2.max(parts, cv2.compare(claspers, cv2.max(shaft, wrist), cv2.CMP_GT) & 3)  # 3: claspers win
        return cv2.copyTo(parts, self.binary.view(np.uint8))

    @property
    def type(self):
        """H x W uint8 per-pixel types at the input resolution (None without a type head)."""
        if self.net_type is None:
            return None
        return self._upsampled('type', lambda: self.upsample(self.net_type))

    @property
    def confidence(self):
        """H x W float32 at the input resolution."""
        return self._upsampled('confidence', lambda: upsample_probability(self.confidence_net, self.size))

    def input_area(self, net_pixels):
        """Input-image pixels covered by `net_pixels` network pixels."""
        sx, sy = self.scale
        return net_pixels * sx * sy

    def net_length(self, input_pixels):
        """A length in input pixels -> network pixels (geometric mean of the two scales)."""
        sx, sy = self.scale
        return input_pixels / math.sqrt(sx * sy)


def network_maps(logits, task_slices):
    """Logits (B, C, h, w, torch, any device) -> dict of small torch maps at the network resolution:
    foreground, parts, type, type_probs, confidence (absent tasks missing). Runs where the logits are
    (on the GPU fast path only these maps come back to the host).

    The instrument probability averages the heads (all were trained to agree on it, also from
    binary-only samples); parts and types are the most likely instrument class inside it. Written
    in log space on the instrument logits alone: P(background) = sigmoid(l_0 - logsumexp(l_1..)),
    P(type | instrument) = softmax(l_1..), argmax of P = argmax of the logits. On the CPU, host_maps
    computes the same maps faster (test/test_segmenter.py keeps the two equal)."""
    import torch
    heads = {task: logits[:, s].float() for task, s in task_slices.items()}  # views: no copy of the logits
    background, log_totals, peaks, maps = [], {}, {}, {}
    # In-place where a temporary would be thrown away: on the CPU each pass over the maps costs.
    for task, head in heads.items():
        instrument = head[:, 1:]
        peak = instrument.amax(1, keepdim=True)
        peaks[task] = peak[:, 0]
        probs = torch.sub(instrument, peak).exp_()
        total = probs.sum(1)
        if task in ('parts', 'type'):
            maps[task] = _channel_argmax(instrument, peak).add_(1)
            maps[f'{task}_probs'] = probs.div_(total.unsqueeze(1))
        log_totals[task] = total.log_().add_(peak[:, 0])  # logsumexp of the instrument logits
        background.append(torch.sub(head[:, 0], log_totals[task]).sigmoid_())
    foreground = torch.stack(background).mean(0).neg_().add_(1.0)
    outside = ~(foreground > FOREGROUND_THRESHOLD)  # NaN probabilities count as outside
    for task in ('parts', 'type'):
        if task in maps:
            maps[task].masked_fill_(outside, 0)
    conf_task = 'type' if 'type' in heads else next(iter(heads))
    head = heads[conf_task]
    top = torch.maximum(head[:, 0], peaks[conf_task])  # the largest logit, background included
    maps['confidence'] = torch.logaddexp(head[:, 0], log_totals[conf_task]).neg_().add_(top).exp_()
    maps['foreground'] = foreground
    return maps


def host_maps(logits, task_slices, image=None):
    """network_maps on the CPU: logits as a float32 numpy array (B, C, h, w) -> the same dict of numpy
    maps (B, ...). The same formulas plane by plane with OpenCV, written into preallocated outputs:
    about 1.7x faster than torch's CPU kernels on one thread, and OpenCV releases the GIL, so the
    images of a batch can be computed on two threads (2x in wall time, docs/BENCHMARKS.md). `image`: an executor's
    submit(fn, *args) for the batch's other images (the first always runs on the calling thread)."""
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    batch, _, height, width = logits.shape
    maps = {'foreground': np.empty((batch, height, width), np.float32),
            'confidence': np.empty((batch, height, width), np.float32)}
    for task in ('parts', 'type'):
        if task in task_slices:
            s = task_slices[task]
            maps[task] = np.empty((batch, height, width), np.uint8)
            maps[f'{task}_probs'] = np.empty((batch, s.stop - s.start - 1, height, width), np.float32)
    jobs = [image(_host_image_maps, logits[b], task_slices, maps, b) for b in range(1, batch)] if image else []
    for b in [0] if jobs else range(batch):
        _host_image_maps(logits[b], task_slices, maps, b)
    for job in jobs:
        job.result()
    return maps


def _host_image_maps(logits, task_slices, maps, b):
    """One image's maps (see network_maps) into maps[...][b]. The instrument logits of each head:
    peak, exp(l - peak) (1 at the peak: argmax = the first channel equal to the peak), their sum."""
    background = []
    conf_task = 'type' if 'type' in task_slices else next(iter(task_slices))
    for task, s in task_slices.items():
        head = logits[s]
        instrument = head[1:]
        peak = instrument[0].copy()
        for plane in instrument[1:]:
            cv2.max(peak, plane, dst=peak)
        probs = maps[f'{task}_probs'][b] if f'{task}_probs' in maps else np.empty(instrument.shape, np.float32)
        for plane, out in zip(instrument, probs):
            cv2.exp(cv2.subtract(plane, peak, dst=out), dst=out)
        total = probs[0].copy()
        for plane in probs[1:]:
            cv2.add(total, plane, dst=total)
        if task in ('parts', 'type'):
            maps[task][b] = _plane_argmax(instrument, peak)
            inverse = np.reciprocal(total)
            for plane in probs:
                cv2.multiply(plane, inverse, dst=plane)
        # P(background) = sigmoid(l_0 - logsumexp) = 1 / (1 + exp(log(total) + peak - l_0))
        p_background = cv2.log(total)
        cv2.add(p_background, peak, dst=p_background)
        cv2.subtract(p_background, head[0], dst=p_background)
        cv2.exp(p_background, dst=p_background)
        cv2.add(p_background, 1.0, dst=p_background)
        np.reciprocal(p_background, out=p_background)
        background.append(p_background)
        if task == conf_task:
            # The largest probability of this head, background included: P(background), or
            # P(instrument) x P(most likely class | instrument) = (1 - P(background)) / total.
            confidence = cv2.subtract(1.0, p_background)
            cv2.divide(confidence, total, dst=confidence)
            cv2.max(confidence, p_background, dst=maps['confidence'][b])
    foreground = maps['foreground'][b]
    foreground[...] = background[0]
    for plane in background[1:]:
        cv2.add(foreground, plane, dst=foreground)
    cv2.addWeighted(foreground, -1.0 / len(background), foreground, 0.0, 1.0, dst=foreground)
    inside = cv2.compare(foreground, FOREGROUND_THRESHOLD, cv2.CMP_GT)  # NaN compares false: outside
    for task in ('parts', 'type'):
        if task in maps:
            cv2.bitwise_and(maps[task][b], inside, dst=maps[task][b])


def _plane_argmax(planes, peak):
    """Index + 1 (uint8) of the first of `planes` equal to `peak` (their maximum), as torch.argmax."""
    count = len(planes)
    label = np.zeros(peak.shape, np.uint8)
    for i, plane in enumerate(planes):
        hit = cv2.compare(plane, peak, cv2.CMP_EQ)  # 255 where this plane is the peak
        cv2.max(label, cv2.bitwise_and(hit, count - i, dst=hit), dst=label)  # the first peak: the highest weight
    return cv2.subtract(count + 1, label, dst=label)


def _channel_argmax(x, peak):
    """argmax over dim 1 of (B, C, h, w) as uint8, given peak = x.amax(1, keepdim=True); the first
    maximum wins, as in torch.argmax. torch's CPU argmax over the channels of NCHW data takes ~40 ms
    at 2x7x256x320; this (the highest reversed channel weight among the maxima) about 1 ms."""
    import torch
    channels = x.shape[1]
    weights = torch.arange(channels, 0, -1, dtype=torch.uint8, device=x.device).view(1, -1, 1, 1)
    maxima = torch.eq(x, peak).view(torch.uint8).mul_(weights)  # in place on the comparison: no third map
    return (channels - maxima.amax(1)).to(torch.uint8)


def results_from_maps(maps, size, class_names):
    """network_maps output (numpy arrays or CPU tensors; with 'dark', the input's near-black pixels at
    the network resolution, see dark_pixels) -> [SegmentationResult] for `size` (H, W)."""
    maps = {k: np.asarray(v) for k, v in maps.items()}
    batch = maps['foreground'].shape[0]
    return [SegmentationResult(foreground=maps['foreground'][i], net_parts=_item(maps, 'parts', i),
                               net_type=_item(maps, 'type', i), type_probs=_item(maps, 'type_probs', i),
                               confidence_net=maps['confidence'][i], size=tuple(size), class_names=class_names,
                               parts_probs=_item(maps, 'parts_probs', i), net_dark=_item(maps, 'dark', i))
            for i in range(batch)]


# The endoscope's field stop (and the black bars of a cropped frame) is near black in every channel:
# instruments found along its edge are a segmentation artefact (inference/instruments.py).
DARK_LEVEL = 20


def dark_pixels(resized):
    """Near-black pixels of network-size frames (B, h, w, 3; uint8 numpy, or a float torch tensor in
    B, 3, h, w): every channel below DARK_LEVEL."""
    if isinstance(resized, np.ndarray):  # OpenCV: 30x numpy's max over the channel axis (7 ms a stereo pair)
        return np.stack([cv2.inRange(frame, (0, 0, 0), (DARK_LEVEL - 1,) * 3) for frame in resized]) > 0
    return resized.amax(1) < DARK_LEVEL


def _item(maps, key, i):
    return maps[key][i] if key in maps else None
