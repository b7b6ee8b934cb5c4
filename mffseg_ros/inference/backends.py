"""Inference backends: each is a callable `x (B,3,h,w float tensor) -> logits (B,C,h,w)`, and the ONE
table of backends and precisions (`BACKENDS`, `PRECISIONS`) that the Segmenter, the node's parameters
and `mffseg bench` all read.

`make_backend(name, model, metadata, *, device, precision, **options)` builds one; `resolve_backend`
turns 'auto' (and aliases) into a name and says why a backend cannot run here.

Backends return their logits in the memory layout they produce, without a conversion pass: the
post-processing (`results.host_maps` on the CPU, `results.network_maps` on a device) works at the
network's resolution on each head's planes, where plain NCHW is as fast as channels-last. (When every
logit channel was upsampled to the input size, NCHW arrays from ONNX Runtime made it 4-6x slower;
`test/test_backends.py` keeps the two backends side by side so that cannot come back unseen.)
"""
import hashlib
import importlib.util
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from mffseg_ros.errors import MffsegError
from mffseg_ros.inference.onnx_export import BranchOutput, export_onnx, quantize_int8, read_onnx_metadata

log = logging.getLogger(__name__)

# int8 is ONNX Runtime's static quantisation on the CPU: the model's inputs and outputs stay float32.
PRECISIONS = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16, 'int8': torch.float32}
# `backend: auto` on the CPU: the backend measured faster END TO END (Segmenter.segment_batch on stereo
# 1280x1024 frames, one thread, post-processing included) on the development machine; see
# docs/BENCHMARKS.md "Choosing backend: auto". On CUDA auto is torch (the GPU fast path).
CPU_AUTO_BACKEND = 'onnx'


class BackendUnavailable(MffsegError):
    """The backend asked for cannot run here (package, provider or device missing)."""


def precision_dtype(precision):
    if precision not in PRECISIONS:
        raise MffsegError(f'unknown precision {precision!r}: choose one of {", ".join(PRECISIONS)}')
    return PRECISIONS[precision]


class TorchBackend:
    """Eager torch in the given precision (weights cast, not autocast: fewer casts per layer)."""

    name = 'torch'

    def __init__(self, model, metadata=None, *, device='cpu', precision='fp32', branch='main',
                 channels_last=False):
        self.dtype, self.precision, self.branch = precision_dtype(precision), precision, branch
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, self.dtype, memory_format=self.memory_format).eval()
        self.description = f'torch eager {precision} on {self.device}'

    def run(self, x):
        return self.model(x, branch=self.branch)['out']

    @torch.inference_mode()
    def __call__(self, x):
        return self.run(x.to(self.device, self.dtype, memory_format=self.memory_format))


class CompiledBackend(TorchBackend):
    """torch.compile: 'reduce-overhead' (CUDA graphs) on CUDA, the default mode elsewhere."""

    name = 'compile'

    def __init__(self, model, metadata=None, *, mode=None, **options):
        super().__init__(model, metadata, **options)
        mode = mode or ('reduce-overhead' if self.device.type == 'cuda' else 'default')
        self.compiled = torch.compile(super().run, mode=mode, dynamic=False)
        self.description = f'torch.compile({mode}) {self.precision} on {self.device}'

    def run(self, x):
        out = self.compiled(x)
        return out.clone() if self.device.type == 'cuda' else out  # graph outputs are overwritten


class OnnxRuntimeBackend:
    """ONNX Runtime. The model is exported once per input shape (the SPP kernels are size-specific)
    into `cache_dir`; a given `onnx_path` serves its own shape. precision 'int8' (CPU): each exported
    file is quantised (`onnx_export.quantize_int8`) on the batches `calibration(batch, height, width)`
    returns, once per shape and `cache_dir`."""

    name = 'onnx'

    def __init__(self, model, metadata=None, *, device='cpu', precision='fp32', branch='main',
                 threads=None, onnx_path=None, cache_dir=None, providers=None, calibration=None):
        import onnxruntime as ort
        self.ort = ort
        if precision not in ('fp32', 'int8'):
            raise BackendUnavailable(f'ONNX Runtime backend runs fp32 and int8 only (asked for {precision}); '
                                     'use the torch backend for fp16/bf16')
        if precision == 'int8' and torch.device(device).type != 'cpu':
            raise BackendUnavailable('int8 is calibrated for the CPU (ONNX Runtime); on CUDA use fp16')
        if precision == 'int8' and calibration is None:
            raise MffsegError('int8 needs calibration frames like the ones it will see '
                              '(Segmenter(..., calibration_frames=[RGB frames]))')
        self.precision, self.calibration = precision, calibration
        self.model, self.metadata, self.branch = model, dict(metadata or {}), branch
        self.threads = threads
        self.device = torch.device(device)
        self.providers = providers or self._providers(self.device)
        self._tmp = None
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix='mffseg-onnx-')
            cache_dir = self._tmp.name
        self.cache_dir = Path(cache_dir)
        self.sessions = {}  # (batch, height, width) -> InferenceSession
        self._fingerprint = None
        if onnx_path is not None:
            self._add_file(Path(onnx_path))
        self.description = (f'ONNX Runtime {ort.__version__} {",".join(map(str, self.providers))}'
                            f' {precision} threads={threads or "auto"}')

    def _providers(self, device):
        available = self.ort.get_available_providers()
        if device.type == 'cuda':
            if 'CUDAExecutionProvider' not in available:
                raise BackendUnavailable('ONNX Runtime has no CUDAExecutionProvider here '
                                         f'(available: {", ".join(available)}); install onnxruntime-gpu')
            return ['CUDAExecutionProvider', 'CPUExecutionProvider']
        return ['CPUExecutionProvider']

    def _session(self, path):
        options = self.ort.SessionOptions()
        options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
            options.inter_op_num_threads = 1
        # Idle pool threads spin-wait for the next parallel op by default: between inferences they burn
        # the cores that the post-processing, DDS and the camera driver need (a stereo node on 2 cores
        # went from 1.1 s to 5.4 s per pair). Sleeping instead costs microseconds per op.
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        options.add_session_config_entry('session.inter_op.allow_spinning', '0')
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        return self.ort.InferenceSession(str(path), options, providers=self.providers)

    def _add_file(self, path):
        if not path.is_file():
            raise MffsegError(f'{path}: ONNX file not found')
        meta = read_onnx_metadata(path)
        if meta.get('branch', self.branch) != self.branch:
            raise MffsegError(f'{path}: exported for branch {meta["branch"]!r}, asked for {self.branch!r}')
        session = self._session(path)
        shape = session.get_inputs()[0].shape
        if len(shape) != 4 or not all(isinstance(d, int) for d in (shape[0], *shape[2:])):
            raise MffsegError(f'{path}: input shape must be fixed (batch, 3, height, width), got {shape}')
        self.sessions[(shape[0], *shape[2:])] = session

    def fingerprint(self):
        """12 hex digits of the model's weights: a `cache_dir` shared by several models (or kept across
        retraining) must never hand one model another's exported file."""
        if self._fingerprint is None:
            digest = hashlib.sha1()
            for name, tensor in self.model.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().to('cpu').contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:12]
        return self._fingerprint

    def model_file(self, batch, height, width):
        """The fp32 ONNX file for this input shape, exported on first use."""
        if self.model is None:
            raise MffsegError(f'no ONNX model for input {batch}x3x{height}x{width} and no torch model to export')
        path = self.cache_dir / f'mff_{self.branch}_{self.fingerprint()}_{batch}x{height}x{width}.onnx'
        if not path.exists():
            log.info('exporting the model to ONNX for input %dx3x%dx%d: %s', batch, height, width, path)
            export_onnx(self.model, path, size=(height, width), batch=batch, branch=self.branch,
                        metadata=self.metadata)
        return path

    def int8_file(self, batch, height, width):
        """The int8 file for this input shape, quantised on first use (7 s for a 2x384x480 pair here)."""
        fp32 = self.model_file(batch, height, width)
        batches = self.calibration(batch, height, width)
        digest = hashlib.sha1(b''.join(b.tobytes() for b in batches)).hexdigest()[:8]  # other frames, other ranges
        path = fp32.with_name(f'{fp32.stem}_int8_{digest}.onnx')
        if not path.exists():
            log.info('quantising the model to int8 for input %dx3x%dx%d: %s', batch, height, width, path)
            quantize_int8(fp32, path, batches)
        return path

    def session_for(self, batch, height, width):
        key = (int(batch), int(height), int(width))
        if key not in self.sessions:
            path = self.int8_file(*key) if self.precision == 'int8' else self.model_file(*key)
            self.sessions[key] = self._session(path)
        return self.sessions[key]

    def __call__(self, x):
        session = self.session_for(x.shape[0], *x.shape[-2:])
        array = x.detach().to('cpu', torch.float32).contiguous().numpy()
        (logits,) = session.run(None, {session.get_inputs()[0].name: array})
        return torch.from_numpy(logits).to(x.device)


class TensorRTBackend:
    """torch-tensorrt where installed, else ONNX Runtime's TensorRT provider. CUDA only; compiled
    per input shape on first use."""

    name = 'tensorrt'

    def __init__(self, model, metadata=None, *, device='cuda', precision='fp16', branch='main', **options):
        if torch.device(device).type != 'cuda' or not torch.cuda.is_available():
            raise BackendUnavailable('TensorRT backend needs a CUDA device')
        self.dtype, self.branch, self.device = precision_dtype(precision), branch, torch.device(device)
        try:
            import torch_tensorrt
        except ImportError as e:
            torch_tensorrt, reason = None, str(e)
        if torch_tensorrt is not None:
            self.trt = torch_tensorrt
            self.model = BranchOutput(model.to(self.device, self.dtype).eval(), branch)
            self.engines, self.onnx = {}, None
            self.description = f'torch-tensorrt {torch_tensorrt.__version__} {precision}'
            return
        import onnxruntime as ort
        if 'TensorrtExecutionProvider' not in ort.get_available_providers():
            raise BackendUnavailable(f'TensorRT backend: torch-tensorrt is not installed ({reason}) and '
                                     'ONNX Runtime has no TensorrtExecutionProvider')
        self.trt = None
        trt_options = {'trt_fp16_enable': precision != 'fp32', 'trt_engine_cache_enable': True}
        self.onnx = OnnxRuntimeBackend(model, metadata, device='cpu', branch=branch,
                                       providers=[('TensorrtExecutionProvider', trt_options),
                                                  'CUDAExecutionProvider', 'CPUExecutionProvider'],
                                       **options)
        self.description = f'ONNX Runtime TensorRT provider ({"fp16" if precision != "fp32" else "fp32"})'

    @torch.inference_mode()
    def __call__(self, x):
        if self.onnx is not None:
            return self.onnx(x.float()).to(x.device)
        x = x.to(self.device, self.dtype)
        key = tuple(x.shape)
        if key not in self.engines:
            self.engines[key] = self.trt.compile(self.model, ir='dynamo', inputs=[x],
                                                 enabled_precisions={self.dtype})
        return self.engines[key](x)


@dataclass(frozen=True)
class BackendSpec:
    """One row of the backend table."""
    name: str
    factory: type
    precisions: tuple          # precisions it runs (fp16 on CUDA only, see `missing`)
    devices: tuple             # device types it runs on
    modules: tuple = ()        # Python packages it needs (any one of them)
    options: tuple = ()        # constructor options beyond model/metadata/device/precision/branch
    help: str = ''
    # The whole forward pass in native code without the GIL, so Python threads run beside it at full
    # speed (Segmenter.segment_pair searches one eye during the other's pass only then: beside eager
    # torch, whose every op needs the GIL to start, the Python search slowed the pass as much as it saved).
    releases_gil: bool = False

    def missing(self, device='cpu', precision='fp32'):
        """Why this backend cannot run `precision` on `device` here ('' when it can)."""
        device_type = torch.device(device).type
        if device_type not in self.devices:
            return f'backend {self.name} runs on {" or ".join(self.devices)} only, not {device_type}'
        if precision not in self.precisions:
            return f'backend {self.name} runs {", ".join(self.precisions)} only, not {precision}'
        if precision == 'fp16' and device_type == 'cpu':
            return 'fp16 needs CUDA (CPU fp16 convolutions are emulated and slow)'
        if precision == 'int8' and device_type != 'cpu':
            return 'int8 is calibrated for the CPU (ONNX Runtime); on CUDA use fp16'
        if self.modules and not any(importlib.util.find_spec(m) for m in self.modules):
            return f'backend {self.name} needs {" or ".join(self.modules)}, which is not installed'
        return ''


BACKENDS = {spec.name: spec for spec in (
    BackendSpec('torch', TorchBackend, ('fp32', 'fp16', 'bf16'), ('cpu', 'cuda'),
                options=('channels_last',), help='eager PyTorch (on CUDA: the GPU fast path)'),
    BackendSpec('compile', CompiledBackend, ('fp32', 'fp16', 'bf16'), ('cpu', 'cuda'),
                options=('channels_last', 'mode'), help='torch.compile'),
    BackendSpec('onnx', OnnxRuntimeBackend, ('fp32', 'int8'), ('cpu', 'cuda'), modules=('onnxruntime',),
                options=('threads', 'onnx_path', 'cache_dir', 'providers', 'calibration'),
                help='ONNX Runtime (int8: static quantisation, CPU)', releases_gil=True),
    BackendSpec('tensorrt', TensorRTBackend, ('fp32', 'fp16'), ('cuda',),
                modules=('torch_tensorrt', 'onnxruntime'), options=('threads', 'onnx_path', 'cache_dir'),
                help='torch-tensorrt, else ONNX Runtime\'s TensorRT provider'),
)}
ALIASES = {'onnxruntime': 'onnx'}
BACKEND_CHOICES = ('auto', *BACKENDS)  # what users may ask for (node parameter, CLI options)


def resolve_backend(name, device='cpu'):
    """'auto' -> the measured default for the device type; aliases -> names; unknown -> MffsegError."""
    name = ALIASES.get(name, name)
    if name == 'auto':
        return 'torch' if torch.device(device).type == 'cuda' else CPU_AUTO_BACKEND
    if name not in BACKENDS:
        raise MffsegError(f'unknown backend {name!r}: choose one of {", ".join(BACKEND_CHOICES)}')
    return name


def make_backend(name, model, metadata=None, *, device='cpu', precision='fp32', **options):
    """A callable `x (B,3,h,w float tensor) -> logits (B,C,h,w)` running `model` with
    backend `name`. Options a backend does not take (e.g. `threads` for torch, whose thread count is
    process-wide and set by the Segmenter) are dropped; see BACKENDS for each backend's options."""
    spec = BACKENDS[resolve_backend(name, device)]
    branch = options.pop('branch', getattr(model, 'branch', 'main'))
    precision_dtype(precision)
    if precision not in spec.precisions:
        raise BackendUnavailable(spec.missing(device, precision))
    dropped = sorted(k for k in options if k not in spec.options)
    if dropped:
        log.debug('backend %s ignores options %s', spec.name, ', '.join(dropped))
    kwargs = {k: v for k, v in options.items() if k in spec.options}
    return spec.factory(model, metadata, device=device, precision=precision, branch=branch, **kwargs)
