"""The Python API the node, the tools and outside scripts call:

    seg = Segmenter.load(weights=None, device='auto')   # None: the default weights shipped in models/
    res = seg.segment(rgb)                               # H x W x 3 uint8 RGB of any size
    res.binary, res.parts, res.type                      # at the input's resolution

Pipeline: preprocess (resize to the network size, a multiple of 32; normalise) -> forward (a backend)
-> postprocess (probabilities and labels at the network's resolution; input-resolution label maps
made on access, see inference/results.py).
"""
import logging
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

from mffseg_ros.errors import MffsegError
from mffseg_ros.inference.backends import BACKENDS, make_backend, precision_dtype, resolve_backend
from mffseg_ros.inference.fast_path import FastPath
from mffseg_ros.inference.results import (  # noqa: F401
    SegmentationResult,
    dark_pixels,
    host_maps,
    network_maps,
    results_from_maps,
)
from mffseg_ros.model.mffnet import BRANCHES, MFFNet
from mffseg_ros.model.weights import WeightsMeta, as_weights_meta, default_metadata, load_weights
from mffseg_ros.paths import default_weights_path

log = logging.getLogger(__name__)
EXPECTED_FRAME_SIZE = (1024, 1280)  # a da Vinci-class endoscope frame (H, W): what start-up warms up for


def resolve_device(device):
    if device in (None, 'auto'):
        if torch.cuda.is_available():
            return torch.device('cuda')
        log.warning('device=auto: no CUDA device available, running on CPU (slower)')
        return torch.device('cpu')
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise MffsegError(f'bad device {device!r}: {e} (use auto, cpu or cuda[:N])') from None
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise MffsegError(f'device {device!r} requested but CUDA is not available (use auto or cpu)')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MffsegError(f'device {device!r}: only {torch.cuda.device_count()} CUDA device(s)')
    elif dev.type != 'cpu':
        raise MffsegError(f'unsupported device {device!r} (use auto, cpu or cuda[:N])')
    return dev


def network_size(height, width, *, input_scale=None, input_size=None):
    """The network's input size for a frame: `input_size` (H, W) as given, else the frame scaled by
    `input_scale` and rounded to multiples of 32 (at least 32)."""
    if input_size is not None:
        h, w = (int(v) for v in input_size)
        if h <= 0 or w <= 0 or h % 32 or w % 32:
            raise MffsegError(f'input_size must be positive multiples of 32, got {h}x{w}')
        return h, w
    scale = 1.0 if input_scale is None else float(input_scale)
    if not 0 < scale <= 4:
        raise MffsegError(f'input_scale must be in (0, 4], got {scale}')
    return (max(32, int(round(height * scale / 32)) * 32), max(32, int(round(width * scale / 32)) * 32))


class Segmenter:
    def __init__(self, model: MFFNet, metadata: WeightsMeta | dict, *, device='cpu', precision='fp32', branch='main',
                 input_scale=None, input_size=None, backend='torch', threads=None, weights_path=None,
                 cuda_graphs=True, calibration_frames=None, **backend_options):
        self.device = resolve_device(device)
        if threads:  # CPU inference threads: torch's setting is process-wide, ONNX Runtime's per session
            torch.set_num_threads(int(threads))
            backend_options['threads'] = int(threads)
        precision_dtype(precision)  # a user error for unknown names
        if precision == 'fp16' and self.device.type == 'cpu':
            log.warning('precision=fp16 needs CUDA; using fp32 on the CPU')
            precision = 'fp32'
        if branch not in BRANCHES:
            raise MffsegError(f'branch must be one of {BRANCHES}, got {branch!r}')
        self.precision, self.dtype = precision, precision_dtype(precision)
        self.metadata = as_weights_meta(model, metadata)
        self.preprocessing = self.metadata.preprocessing
        self.weights_path = weights_path
        self.tasks = dict(model.tasks)
        self.task_slices = dict(model.task_slices)
        self.class_names = {t: self.metadata.names(t) for t in self.tasks}
        # Without an explicit scale or size, frames are resized to about the training frame size
        # (whatever the camera's resolution: the model was trained on whole frames of that size).
        self.train_size = self.preprocessing.train_size
        if input_scale is None and not self.train_size:
            input_scale = self.preprocessing.input_scale
        self.input_scale = input_scale
        self.input_size = input_size
        network_size(64, 64, input_scale=input_scale, input_size=input_size)  # validates both
        self._mean, self._std = self.preprocessing.mean_std(self.device)
        self.branch = branch
        self.backend_name = resolve_backend(backend, self.device)

        self.model = model.to(self.device).eval()
        self.model.branch = branch
        if self.dtype != torch.float32:
            self.model = self.model.to(self.dtype)
        backend_options.setdefault('channels_last', self.device.type == 'cuda')  # as the fast path runs
        if precision == 'int8':  # static quantisation: activation ranges from frames like the real ones
            self.calibration_frames = list(calibration_frames or [])
            if self.calibration_frames:
                backend_options['calibration'] = self._calibration_batches
        self._backend = make_backend(self.backend_name, self.model, self.metadata.to_dict(), device=self.device,
                                     precision=precision, branch=branch, **backend_options)
        self._fast_path = None
        # Post-processing of a batch's second image (the right eye) runs beside the first: OpenCV
        # releases the GIL, and the network's threads are idle by then.
        self._second_image = ThreadPoolExecutor(max_workers=1, thread_name_prefix='mffseg-maps')
        if self.device.type == 'cuda' and self.backend_name == 'torch':
            self._fast_path = FastPath(self, cuda_graphs=cuda_graphs)

    @classmethod
    def load(cls, weights=None, *, device='auto', precision='fp32', branch='main', input_scale=None,
             input_size=None, backend='torch', threads=None, **backend_options):
        """Loads weights (None: the shipped default; a missing default gives a random model with a
        warning). A missing or corrupt file given explicitly raises WeightsError with path and reason.
        precision 'int8' (CPU, ONNX Runtime) also needs calibration_frames: RGB frames like the ones it
        will segment (e.g. `mffseg_ros.data.synth.calibration_frames()`), 16 or more."""
        path = Path(weights) if weights else default_weights_path()
        if weights is None and not path.exists():
            warnings.warn(f'default weights {path} not found: using a RANDOMLY INITIALISED model '
                          '(outputs are meaningless)', stacklevel=2)
            model = MFFNet()
            meta = default_metadata(model, random_init=True)
            path = None
        else:
            model, meta = load_weights(path)
        return cls(model, meta, device=device, precision=precision, branch=branch, input_scale=input_scale,
                   input_size=input_size, backend=backend, threads=threads, weights_path=path,
                   **backend_options)

    def describe(self):
        if self.input_size:
            size = 'x'.join(map(str, self.input_size))
        elif self.input_scale is not None:
            size = f'scale {self.input_scale}'
        else:
            size = 'fit {}x{}'.format(*self.train_size)
        src = self.weights_path.name if self.weights_path else 'random init'
        return (f'MFFNet[{"+".join(self.tasks)}] {self.branch} branch, input {size}, {self.device.type} '
                f'{self.precision}, backend {self.backend_name}, weights {src}')

    def network_size(self, height, width):
        scale = self.input_scale
        if scale is None and self.input_size is None:
            scale = min(self.train_size[0] / height, self.train_size[1] / width)
            if scale > 4:
                raise MffsegError(f'frame {height}x{width} is too small for this model (trained on '
                                  f'{self.train_size[0]}x{self.train_size[1]} frames; at most 4x upscaling)')
        return network_size(height, width, input_scale=scale, input_size=self.input_size)

    # --- pipeline -------------------------------------------------------------------------------
    @staticmethod
    def check_frame(rgb):
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            desc = f'{rgb.dtype} {rgb.shape}' if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise MffsegError(f'expected an H x W x 3 uint8 RGB array, got {desc}')
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise MffsegError(f'empty image {rgb.shape}')

    def preprocess(self, frames):
        """Frames (same size) -> normalised (B, 3, h, w) tensor on the device, in the model's dtype."""
        return self._normalise(self.resize(frames))

    def resize(self, frames):
        """Frames (same size) -> (B, h, w, 3) uint8 at the network's input size."""
        return self._resized(frames, *self.network_size(*frames[0].shape[:2]))

    @staticmethod
    def _resized(frames, height, width):
        h, w = frames[0].shape[:2]
        interp = cv2.INTER_AREA if height < h else cv2.INTER_LINEAR
        return np.stack([f if (h, w) == (height, width) else cv2.resize(f, (width, height), interpolation=interp)
                         for f in frames])

    def _normalise(self, batch):
        """(B, h, w, 3) uint8 -> normalised (B, 3, h, w) tensor on the device, in the model's dtype."""
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
        return x.sub_(self._mean).div_(self._std).to(self.dtype)  # in place: a third of the time on a CPU

    def _calibration_batches(self, batch, height, width):
        """The calibration frames as normalised float32 arrays of (batch, 3, height, width), for int8."""
        frames = [self._resized([f], height, width)[0] for f in self.calibration_frames]
        return [self._normalise(np.stack(frames[i:i + batch])).float().cpu().numpy()
                for i in range(0, len(frames) - batch + 1, batch)]

    def forward(self, x):
        return self._backend(x)

    def postprocess(self, logits, size):
        """Logits (B, C, h, w) -> [SegmentationResult] for frames of `size` (H, W): probabilities and
        labels stay at the network's resolution; input-resolution maps are made on access."""
        if logits.device.type == 'cpu':  # OpenCV on the host; a stereo pair's second image on a second thread
            maps = host_maps(logits.detach().float().numpy(), self.task_slices,
                             self._second_image.submit if len(logits) > 1 else None)
        else:
            with torch.inference_mode():
                maps = {k: v.cpu().numpy() for k, v in network_maps(logits, self.task_slices).items()}
        return results_from_maps(maps, size, self.class_names)

    def _check_batch(self, frames):
        for f in frames:
            self.check_frame(f)
        size = frames[0].shape[:2]
        if any(f.shape[:2] != size for f in frames):
            raise MffsegError(f'frames of one batch must have the same size, got {[f.shape for f in frames]}')

    def segment_batch(self, frames):
        """Segments same-size frames in ONE forward pass (e.g. a stereo pair)."""
        if not frames:
            return []
        self._check_batch(frames)
        if self._fast_path is not None:
            results = self._fast_path.segment_batch(frames)
            for result, frame in zip(results, frames):
                result.image = frame
            return results
        resized = self.resize(frames)
        return self.results(self.forward(self._normalise(resized)), frames, resized)

    @property
    def pairs_eye_by_eye(self):
        """Whether segment_pair passes a pair's eyes one at a time (the CPU, a backend that runs its pass
        without the GIL) rather than in one batch."""
        return self.device.type == 'cpu' and BACKENDS[self.backend_name].releases_gil

    def segment_pair(self, left, right, early=None):
        """A stereo pair -> (left result, right result, the value of early(left result) or None):
        segment_batch's maps, up to the network's rounding. On the CPU with a backend that runs its pass
        without the GIL (ONNX Runtime, BackendSpec.releases_gil) the two eyes go through the network one
        after the other (as fast as one batch of two: 214 against 216 ms a 384x480 pair here) and the left
        eye's maps, then `early` (the node: the left eye's instrument search), run on a second thread while
        the right eye is in the network, on a core the network leaves free (the node gives it every core
        but one). Otherwise one batch, and `early` is not called (None: the caller does that work its
        usual way; nothing would run beside it)."""
        if not self.pairs_eye_by_eye:
            res_left, res_right = self.segment_batch([left, right])
            return res_left, res_right, None
        frames = [left, right]
        self._check_batch(frames)
        resized = self.resize(frames)
        x = self._normalise(resized)
        beside = self.results_beside(self.forward(x[:1]), frames[:1], resized[:1], early)
        res_right = self.results(self.forward(x[1:]), frames[1:], resized[1:])[0]
        res_left, value = beside.result()
        return res_left, res_right, value

    def results_beside(self, logits, frames, resized, early=None):
        """A Future of (results() of one frame, early(that result) or None), made on the second thread."""
        def work():
            result = self.results(logits, frames, resized)[0]  # one image: no job for the second thread
            return result, early(result) if early else None
        return self._second_image.submit(work)

    def results(self, logits, frames, resized):
        """postprocess() of the logits of `frames` (their `resized` batch went in), with what the
        instrument search needs besides: each frame's near-black pixels on the network's grid (the field
        stop) and the frame itself (a reference: stereo refines the tips' depth on the images)."""
        results = self.postprocess(logits, frames[0].shape[:2])
        for result, dark, frame in zip(results, dark_pixels(resized), frames):
            result.net_dark, result.image = dark, frame
        return results

    def segment(self, rgb):
        return self.segment_batch([rgb])[0]

    def warm_up(self, size=EXPECTED_FRAME_SIZE, batch=1, *, pair=False):
        """Runs one blank batch of `batch` frames of `size` (H, W) through the whole pipeline (with
        `pair`, a blank stereo pair through segment_pair) and returns the seconds it took: what the first
        real frame of that shape would otherwise pay (ONNX export and session, cuDNN autotuning, CUDA
        graph capture, torch.compile)."""
        height, width = (int(v) for v in size)
        start = time.perf_counter()
        blank = np.zeros((height, width, 3), np.uint8)
        if pair:
            self.segment_pair(blank, blank)
        else:
            self.segment_batch([blank] * batch)
        return time.perf_counter() - start
