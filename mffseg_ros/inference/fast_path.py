"""The GPU fast path the node uses on CUDA: the whole frame -> labels pipeline runs on the device.

Per input shape (batch, height, width) a `_Plan` holds preallocated buffers: uint8 frames go into a
pinned host buffer, one asynchronous copy moves them to the device, and resize (area when shrinking,
bilinear when enlarging, like the eager pipeline's OpenCV resize), normalisation, the network
(channels_last, in the segmenter's precision) and the network-resolution maps (inference/results.py:
P(instrument), labels, type probabilities, confidence) all run there, captured once in a CUDA graph and
replayed per frame. Only those small maps come back; nothing is computed at the camera's resolution.
On the CPU the same code runs eagerly (no pinning, no graphs) so CI can check that it agrees with the
eager pipeline.
"""
import logging

import torch
import torch.nn.functional as F

from mffseg_ros.errors import MffsegError
from mffseg_ros.inference.results import dark_pixels, network_maps, results_from_maps

log = logging.getLogger(__name__)
WARMUP_RUNS = 3  # cuDNN picks its algorithms in these runs, before the graph is captured


class _Plan:
    """Buffers, stream and (on CUDA) the captured graph for one input shape."""

    def __init__(self, fast, batch, height, width):
        self.fast = fast
        dev = fast.device
        self.on_cuda = dev.type == 'cuda'
        shape = (batch, height, width, 3)
        self.host_in = torch.empty(shape, dtype=torch.uint8, pin_memory=self.on_cuda)
        self.dev_in = torch.empty(shape, dtype=torch.uint8, device=dev) if self.on_cuda else self.host_in
        self.size = (height, width)
        self.net_size = fast.segmenter.network_size(height, width)
        self.stream = torch.cuda.Stream(dev) if self.on_cuda else None
        self.graph = None
        self.maps = None  # device outputs: name -> tensor (static when a graph is captured)
        if self.on_cuda:
            self._capture()
            self.host_maps = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in self.maps.items()}

    def _capture(self):
        self.stream.wait_stream(torch.cuda.current_stream())  # buffers were made on the default stream
        with torch.cuda.stream(self.stream):
            for _ in range(WARMUP_RUNS):
                self.maps = self.fast.compute(self.dev_in, self.net_size)
        self.stream.synchronize()
        if not self.fast.cuda_graphs:
            return
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                self.maps = self.fast.compute(self.dev_in, self.net_size)
            self.graph = graph
        except RuntimeError as e:  # an op that cannot be captured: stay correct, only slower
            log.warning('CUDA graph capture failed (%s); running the fast path without graphs', e)
            self.graph = None

    def run(self, frames):
        for i, frame in enumerate(frames):  # one copy into the preallocated (pinned) buffer
            self.host_in[i].numpy()[...] = frame
        if not self.on_cuda:
            return {k: v.numpy() for k, v in self.fast.compute(self.dev_in, self.net_size).items()}
        with torch.cuda.stream(self.stream):
            self.dev_in.copy_(self.host_in, non_blocking=True)
            if self.graph is not None:
                self.graph.replay()
            else:
                self.maps = self.fast.compute(self.dev_in, self.net_size)
            for k, v in self.maps.items():
                self.host_maps[k].copy_(v, non_blocking=True)
        self.stream.synchronize()
        # The pinned buffers are reused by the next frame: results get their own copies.
        return {k: v.numpy().copy() for k, v in self.host_maps.items()}


class FastPath:
    """Same results as `segmenter.segment_batch` (eager pipeline), computed on the device.

    `cuda_graphs`: capture the pipeline per input shape (CUDA only). `channels_last`: NHWC convs,
    faster with tensor cores. The segmenter's precision is used (fp16 is what the node asks for on
    CUDA)."""

    def __init__(self, segmenter, *, cuda_graphs=True, channels_last=True):
        self.segmenter = segmenter
        self.device = segmenter.device
        self.dtype = segmenter.dtype
        self.branch = segmenter.branch
        self.task_slices = dict(segmenter.task_slices)
        self.cuda_graphs = cuda_graphs and self.device.type == 'cuda'
        if self.device.type == 'cuda':
            # Input shapes are fixed per plan, so autotuned convolution algorithms pay off; the tuning
            # happens in the warm-up runs, before the graph is captured.
            torch.backends.cudnn.benchmark = True
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = segmenter.model.to(memory_format=self.memory_format).eval()
        self.mean, self.std = segmenter.preprocessing.mean_std(self.device)
        self.plans = {}

    def compute(self, frames_u8, net_size):
        """uint8 (B, H, W, 3) on the device -> network_maps (inference/results.py) on the device."""
        with torch.inference_mode():
            x = frames_u8.permute(0, 3, 1, 2).float()
            if tuple(net_size) != tuple(x.shape[-2:]):
                shrink = net_size[0] < x.shape[-2]
                x = F.interpolate(x, size=net_size, mode='area' if shrink else 'bilinear',
                                  **({} if shrink else {'align_corners': False}))
                x = x.round().clamp_(0, 255)  # the eager pipeline resizes uint8 images
            dark = dark_pixels(x)
            x = ((x - self.mean) / self.std).to(self.dtype).contiguous(memory_format=self.memory_format)
            return {**network_maps(self.model(x, branch=self.branch)['out'], self.task_slices), 'dark': dark}

    def plan(self, batch, height, width):
        key = (batch, height, width)
        if key not in self.plans:
            log.info('fast path: preparing buffers%s for %dx%dx%d frames',
                     ' and a CUDA graph' if self.cuda_graphs else '', *key)
            self.plans[key] = _Plan(self, *key)
        return self.plans[key]

    def segment_batch(self, frames):
        if not frames:
            return []
        for f in frames:
            self.segmenter.check_frame(f)
        height, width = frames[0].shape[:2]
        if any(f.shape[:2] != (height, width) for f in frames):
            raise MffsegError(f'frames of one batch must have the same size, got {[f.shape for f in frames]}')
        maps = self.plan(len(frames), height, width).run(frames)
        return results_from_maps(maps, (height, width), self.segmenter.class_names)

    def segment(self, rgb):
        return self.segment_batch([rgb])[0]
